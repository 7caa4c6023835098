"""Rank and world size under torchrun, and the few collectives the training stages use.

prunecli does not launch processes: ``torchrun --nproc_per_node N -m prunecli prune ...`` (one machine) or
with ``--nnodes``/``--rdzv-endpoint`` (several) starts them and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init` reads them and joins the group. Without them there is one
process and every helper here is a no-op. What runs on rank 0 only is listed in the README
("Many GPUs and machines").
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

# How long the other ranks wait in a collective, e.g. for rank 0's plan (a learned search or a
# sensitivity scan runs on rank 0 alone). A rank that fails does not make the others wait this long:
# torchrun stops the whole group as soon as one process exits with an error.
TIMEOUT_MINUTES = 240


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    backend: str | None = None  # gloo | nccl once the process group is up

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def to_json(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE = World()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def launched() -> bool:
    """True when torchrun (or another launcher setting WORLD_SIZE > 1) started this process."""
    return (_env_int("WORLD_SIZE") or 1) > 1


def local_rank() -> int | None:
    return _env_int("LOCAL_RANK") if launched() else None


def rank_prefix() -> str:
    """``"rank N: "`` for a non-zero rank under torchrun (its error lines say where they came from)."""
    rank = _env_int("RANK") or 0
    return f"rank {rank}: " if launched() and rank else ""


def is_quiet_rank() -> bool:
    """Non-zero ranks print no progress, tables or interrupt lines (rank 0 speaks for the group)."""
    return launched() and (_env_int("RANK") or 0) != 0


_state = {"joined": False}


def joined() -> bool:
    """True once this process joined torchrun's process group (and still after it left it)."""
    return _state["joined"]


def silent_error() -> bool:
    """A non-zero rank keeps quiet about an error raised before the group formed: it comes from the flags and
    files every rank reads alike, and rank 0 says it. After that each rank names its own failure."""
    return is_quiet_rank() and not joined()


PEER_FAILURE = ("closed by peer", "reset by peer", "Broken pipe", "communicator was aborted", "NCCL error",
                "DistBackendError", "DistNetworkError", "DistStoreError")


def peer_failure(exc: BaseException) -> str | None:
    """For an error that only says another rank of the group went away: the line to print (rank 0), or "" (the
    others keep quiet: the rank that failed, or torchrun's summary, says why). None for any other error."""
    if not joined():
        return None
    text = f"{type(exc).__name__}: {exc}"
    if not any(marker in text for marker in PEER_FAILURE):
        return None
    if is_quiet_rank():
        return ""
    return ("another process of the torchrun group failed and the group stopped (its own error line, or torchrun's "
            "summary below, says why)")


def init(device_kind: str) -> World:
    """Join the process group torchrun describes (nccl on CUDA, gloo otherwise); SINGLE without torchrun."""
    if not launched():
        return SINGLE
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(_env_int("LOCAL_RANK") or 0)
        dist.init_process_group(backend, timeout=timedelta(minutes=TIMEOUT_MINUTES))
    _state["joined"] = True
    return World(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=backend)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(world: World, value=None):
    """Rank 0's ``value`` on every rank (a picklable object between prunecli's own processes, never a file)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(world: World, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    if not world.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    # nccl reduces GPU tensors only (init set this process's device)
    device = f"cuda:{torch.cuda.current_device()}" if world.backend == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(world: World, value) -> list:
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    out = [None] * world.world_size
    dist.all_gather_object(out, value)
    return out


def _broadcast_(world: World, tensors) -> None:
    if not world.distributed:
        return
    import torch.distributed as dist

    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def broadcast_buffers_(world: World, model) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics, which each rank updates locally)."""
    _broadcast_(world, model.buffers())


def broadcast_state_(world: World, model) -> None:
    """Every rank takes rank 0's parameters and buffers (before training, so that all start alike)."""
    _broadcast_(world, list(model.parameters()) + list(model.buffers()))


def state_sha256(model) -> str:
    """sha256 of every parameter and buffer (names, shapes and bytes, in state_dict order)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
