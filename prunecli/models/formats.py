"""Reading weight files safely: checkpoints (``weights_only=True``), safetensors, state_dict fitting.

The bottom of the loading stack: :mod:`prunecli.artifacts.bundle` and :mod:`prunecli.artifacts.load` both read through here,
and this module imports neither.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

from prunecli.core.errors import UsageError


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, flag: str) -> None:
    if not path.exists():
        raise UsageError(f"{flag} {path}: file not found")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; pass a file")
    if path.stat().st_size == 0:
        raise UsageError(f"{flag} {path}: the file is empty (an interrupted save?); pass a complete file")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def refuse_unprunable_formats(path: Path, flag: str) -> None:
    if path.suffix.lower() == ".onnx":
        raise UsageError(
            f"{flag} {path} is an ONNX graph, which cannot be structurally pruned; "
            "pass the PyTorch model it was exported from (checkpoint plus --arch, or file.py:factory)"
        )
    if _is_torchscript(path):
        raise UsageError(
            f"{flag} {path} is a TorchScript archive, which cannot be structurally pruned; "
            "pass the eager model instead: a state_dict with --arch, or file.py:factory"
        )


def torch_load(path: Path, flag: str, trust_pickle: bool = False):
    """torch.load with weights_only=True unless the user typed --trust-pickle."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if "Weights only load failed" in text or found:
            what = f" ({found.group(1)})" if found else ""
            raise UsageError(
                f"{flag} {path} holds a pickled Python object{what}, not only weights: loading it would execute "
                "code from the file. If you trust its source, pass --trust-pickle; better, re-save it with "
                "torch.save(model.state_dict(), ...) and pass --arch"
            ) from exc
        raise UsageError(f"{flag} {path} is not a readable PyTorch checkpoint ({first_line(exc)}): corrupted?") from exc
    except Exception as exc:  # torch raises many types for damaged files (RuntimeError, EOFError, IndexError, ...)
        raise UsageError(
            f"{flag} {path} is not a readable PyTorch checkpoint ({first_line(exc)}): truncated or corrupted? "
            "re-save it and try again"
        ) from exc


def read_safetensors(path: Path, flag: str) -> tuple[dict, dict]:
    """(state_dict, metadata) of a safetensors file; a damaged file is a UsageError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        return tensors, metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{flag} {path} is not a readable safetensors file ({first_line(exc)}); "
                         "truncated or corrupted? re-create it") from exc


def is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap_state_dict(obj: Any) -> dict | None:
    """The state_dict inside common checkpoint layouts, or None."""
    if is_tensor_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        sd = next((obj[k] for k in ("state_dict", "model_state_dict", "model") if is_tensor_dict(obj.get(k))), None)
        if sd is None:
            return None
    else:
        return None
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_weights(path: Path, flag: str = "--weights") -> dict:
    """A state_dict from a .safetensors or torch checkpoint file (always weights_only=True)."""
    check_file(path, flag)
    refuse_unprunable_formats(path, flag)
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path, flag)[0]
    obj = torch_load(path, flag, trust_pickle=False)
    sd = unwrap_state_dict(obj)
    if sd is None:
        raise UsageError(f"{flag} {path} holds no state_dict (found {type(obj).__name__}); save model.state_dict()")
    return sd


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def load_weights_into(model, state_dict: dict, source: str, arch: str | None) -> None:
    """Strict load that fails with one line naming the first mismatching keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} in file vs {tuple(own[k].shape)} in model"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        parts.append("shape mismatch " + "; ".join(shapes[:2]) + (f" (+{len(shapes) - 2} more)" if len(shapes) > 2 else ""))
    if parts:
        raise UsageError(
            f"{source} does not fit {arch or type(model).__name__}: {'; '.join(parts)}. "
            "Check --arch and its options (e.g. torchvision:resnet18:num_classes=10)"
        )
    model.load_state_dict(state_dict, strict=True)


def check_finite(model, source: str) -> None:
    """Refuse weights or buffers holding NaN or inf, naming the first such tensor."""
    import torch

    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UsageError(f"{source}: tensor {name} holds {bad} non-finite value(s) (NaN or inf); "
                             "fix or re-save the weights before pruning")
