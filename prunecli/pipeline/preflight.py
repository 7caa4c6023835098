"""What `prune` refuses before loading anything: outputs that would clobber inputs, a criterion, allocation or
fine-tuning that needs --data without it, and the placements torchrun cannot run (exit 2, one line each)."""

from __future__ import annotations

from pathlib import Path

from prunecli.core import distributed
from prunecli.core.device import resolve
from prunecli.core.errors import UsageError
from prunecli.core.outputs import check_not_input, check_out_dir
from prunecli.plan.allocators import ALLOCATORS
from prunecli.plan.criteria import CRITERIA, DATA_CRITERIA
from prunecli.plan.stage import DATA_NEEDS


def check_prune_request(config, *, out: Path, force: bool, resume: bool, data, epochs: int, inputs=(),
                        check_out: bool = True, from_scratch: bool = False) -> None:
    """Everything in a prune request (a PruneConfig and the run's flags) that can be refused before any work."""
    if resume or not check_out:  # under torchrun rank 0 checks --out (the others write nothing)
        check_not_input(Path(out), inputs)
    else:
        check_out_dir(Path(out), force, inputs=inputs)
    CRITERIA.get(config.criterion)
    if getattr(ALLOCATORS.for_config(config.allocation), "needs", None) in DATA_NEEDS and not data:
        raise UsageError(f"--allocation {config.allocation_name} evaluates the model while it allocates: pass "
                         "--data SPEC (e.g. --data digits)")
    if config.allocation_name == "learned" and config.flops is None and config.params is None:
        raise UsageError("--allocation learned searches its ratios for a FLOPs or params budget: give --flops or "
                         "--params as well (with --latency too, the latency fit then runs over the learned order), "
                         "or use --allocation latency, uniform, global or sensitivity for a latency budget alone")
    if config.criterion in DATA_CRITERIA and not data:
        raise UsageError(f"--criterion {config.criterion} needs training data: pass --data SPEC (e.g. --data digits)")
    if epochs and not data:
        raise UsageError(f"--epochs {epochs} needs --data SPEC to fine-tune on (e.g. --data digits)")
    if from_scratch and (not data or not epochs):
        raise UsageError("--from-scratch trains the pruned architecture afresh: pass --data SPEC and --epochs N")
    if from_scratch and config.schedule_name != "oneshot":
        raise UsageError(f"--from-scratch trains the final architecture once: use --schedule oneshot, not "
                         f"{config.schedule_name}")


def placement_for(device: str, amp: str, sync_bn: bool, schedule: str, data, epochs: int):
    """--device/--amp resolved (exit 2 for a device this machine lacks), and what torchrun runs refused up front."""
    placement = resolve(device, amp, local_rank=distributed.local_rank())
    if sync_bn and not distributed.launched():
        raise UsageError("--sync-bn synchronises BatchNorm across torchrun processes: run under torchrun or drop it")
    if sync_bn and placement.kind != "cuda":
        raise UsageError("--sync-bn needs GPUs (torch's SyncBatchNorm runs on CUDA only); drop it on "
                         f"--device {placement.device}")
    if distributed.launched():
        if schedule != "oneshot":
            raise UsageError(f"--schedule {schedule} runs in one process; under torchrun use --schedule oneshot")
        if not data or epochs == 0:
            raise UsageError("under torchrun prunecli fine-tunes in parallel: pass --data SPEC and --epochs N "
                             "(to prune without training, run prunecli without torchrun)")
    return placement
