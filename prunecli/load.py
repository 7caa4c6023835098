"""MODEL / --arch / --weights specs -> an eval-mode ``nn.Module`` plus its example input.

Every command loads through :func:`load_model`. What a MODEL argument may be:

``torchvision:NAME[:key=value,...]``
    A torchvision architecture, randomly initialised (``torchvision:resnet18:num_classes=10``).
    ``--weights FILE`` then loads a state_dict into it.
``path/to/file.py:factory[:key=value,...]`` or ``package.module:factory``
    User code that builds the model. **This runs that code**, as importing any Python file does.
``file.pt`` / ``file.pth``
    A checkpoint read with ``torch.load(weights_only=True)``. Either a plain state_dict (then
    ``--arch SPEC`` names the architecture) or the self-describing convention
    ``{"arch": "torchvision:resnet18", "state_dict": {...}, "input_shape": [1, 3, 224, 224]}``
    (``input_shape`` optional), which needs no other flag.
``file.safetensors``
    Weights plus ``--arch``, or a ``prunecli.arch`` entry in the file's metadata.
A prunecli bundle directory
    Rebuilt from its JSON recipe and safetensors weights (see :mod:`prunecli.bundle`).

Refused: a pickled ``nn.Module`` (``torch.save(model)``) unless the user passes ``--trust-pickle``,
because unpickling it executes code from the file; TorchScript archives and ONNX files, which
cannot be structurally pruned.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arch import absolute_spec, arch_name, build_arch, is_arch_spec
from .errors import UsageError
from .preset import Preset, get_preset, match_preset

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
CHECKPOINT_ARCH_KEY = "arch"
SAFETENSORS_ARCH_KEY = "prunecli.arch"


@dataclass
class LoadedModel:
    """A model ready for analysis: eval mode, on CPU, with an example input it accepts."""

    model: Any  # torch.nn.Module (torch is imported lazily)
    example_input: Any  # torch.Tensor
    input_shape: tuple[int, ...]
    arch: str | None  # a spec that rebuilds the architecture, when there is one
    kind: str  # torchvision | factory | checkpoint | safetensors | pickle | bundle
    source: Path | None = None
    source_sha256: str | None = None
    preset: Preset | None = None
    recipe: dict | None = None  # set for bundles

    @property
    def display_name(self) -> str:
        return str(self.source) if self.source else (self.arch or type(self.model).__name__)

    def output_classes(self) -> int | None:
        """Width of a classifier's (batch, classes) output at the example input; None for other outputs."""
        import torch

        with torch.no_grad():
            out = self.model.eval()(self.example_input)
        return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


# --------------------------------------------------------------------------- small parsers
def parse_input_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    """``1,3,224,224`` or ``1x3x224x224`` -> (1, 3, 224, 224)."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise UsageError(f"{flag} {text!r} is not a shape; write positive integers like 1,3,224,224")
    return shape


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- files
def _check_file(path: Path, flag: str) -> None:
    if not path.exists():
        raise UsageError(f"{flag} {path}: file not found")
    if path.is_file() and path.stat().st_size == 0:
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


def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def _refuse_unprunable_formats(path: Path, flag: str) -> None:
    if _is_onnx(path):
        raise UsageError(
            f"{flag} {path} is an ONNX graph, which cannot be structurally pruned; "
            "pass the PyTorch model it was exported from (checkpoint plus --arch, or file.py:factory)"
        )
    if _is_torchscript(path):
        raise UsageError(
            f"{flag} {path} is a TorchScript archive, which cannot be structurally pruned; "
            "pass the eager model instead: a state_dict with --arch, or file.py:factory"
        )


def _torch_load(path: Path, flag: str, trust_pickle: bool):
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
        raise UsageError(f"{flag} {path} is not a readable PyTorch checkpoint ({_first_line(exc)}): corrupted?") from exc
    except Exception as exc:  # torch raises many types for damaged files (RuntimeError, EOFError, IndexError, ...)
        raise UsageError(
            f"{flag} {path} is not a readable PyTorch checkpoint ({_first_line(exc)}): truncated or corrupted? "
            "re-save it and try again"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def read_safetensors(path: Path, flag: str) -> tuple[dict, dict]:
    """(state_dict, metadata) of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        return tensors, metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{flag} {path} is not a readable safetensors file ({_first_line(exc)})") from exc


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap_state_dict(obj: Any) -> dict | None:
    """The state_dict inside common checkpoint layouts, or None."""
    if _is_tensor_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        sd = next((obj[k] for k in ("state_dict", "model_state_dict", "model") if _is_tensor_dict(obj.get(k))), None)
        if sd is None:
            return None
    else:
        return None
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_weights(path: Path, flag: str = "--weights") -> dict:
    """A state_dict from a .safetensors or torch checkpoint file (always weights_only=True)."""
    _check_file(path, flag)
    _refuse_unprunable_formats(path, flag)
    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path, flag)[0]
    obj = _torch_load(path, flag, trust_pickle=False)
    sd = _unwrap_state_dict(obj)
    if sd is None:
        raise UsageError(f"{flag} {path} holds no state_dict (found {type(obj).__name__}); save model.state_dict()")
    return sd


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
        parts.append(f"missing keys {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
    if unexpected:
        parts.append(
            f"unexpected keys {', '.join(unexpected[:3])}" + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
        )
    if shapes:
        parts.append("shape mismatch " + "; ".join(shapes[:2]) + (f" (+{len(shapes) - 2} more)" if len(shapes) > 2 else ""))
    if parts:
        raise UsageError(
            f"{source} does not fit {arch or type(model).__name__}: {'; '.join(parts)}. "
            "Check --arch and its options (e.g. torchvision:resnet18:num_classes=10)"
        )
    model.load_state_dict(state_dict, strict=True)


# --------------------------------------------------------------------------- the entry point
def load_model(
    spec: str,
    *,
    arch: str | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | str | None = None,
    preset: str | None = None,
    check_forward: bool = True,
) -> LoadedModel:
    """Load MODEL (see module docstring); raise :class:`UsageError` with one actionable line on bad input."""
    import torch

    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    if arch is not None and not is_arch_spec(arch):
        raise UsageError(f"--arch {arch!r} is not an architecture spec; use torchvision:NAME or file.py:factory")

    path = Path(spec)
    stored_shape: tuple[int, ...] | None = None
    recipe = None  # set for bundles
    if path.is_dir():
        from .bundle import is_bundle, load_bundle_model

        if not is_bundle(path):
            raise UsageError(f"MODEL {path} is a directory but not a prunecli bundle (no recipe.json in it)")
        if weights is not None or arch is not None:
            raise UsageError("--weights/--arch cannot be used with a bundle MODEL: the bundle carries both")
        model, recipe = load_bundle_model(path)
        kind, arch_spec, stored_shape = "bundle", recipe["source"].get("arch"), tuple(recipe["input_shape"])
    elif path.exists() or (not is_arch_spec(spec) and path.suffix):
        _check_file(path, "MODEL")
        _refuse_unprunable_formats(path, "MODEL")
        if weights is not None:
            raise UsageError(f"--weights is for architecture MODELs (torchvision:NAME, file.py:factory); {path} is a file already")
        if path.suffix.lower() == ".safetensors":
            sd, meta = read_safetensors(path, "MODEL")
            arch_spec = arch or meta.get(SAFETENSORS_ARCH_KEY)
            if not arch_spec:
                raise UsageError(f"MODEL {path} holds weights only; pass --arch torchvision:NAME (or file.py:factory) to name the architecture")
            model = build_arch(arch_spec, "--arch")
            load_weights_into(model, sd, str(path), arch_spec)
            kind = "safetensors"
            if meta.get("prunecli.input_shape"):
                stored_shape = parse_input_shape(meta["prunecli.input_shape"])
        else:
            obj = _torch_load(path, "MODEL", trust_pickle)
            if isinstance(obj, torch.nn.Module):  # only reachable with --trust-pickle
                model, arch_spec, kind = obj, arch, "pickle"
            else:
                arch_spec = arch or (obj.get(CHECKPOINT_ARCH_KEY) if isinstance(obj, dict) else None)
                sd = _unwrap_state_dict(obj)
                if sd is None:
                    raise UsageError(
                        f"MODEL {path} holds {type(obj).__name__} but no state_dict; save {{'arch': SPEC, 'state_dict': model.state_dict()}}"
                    )
                if not arch_spec:
                    raise UsageError(
                        f"MODEL {path} is a plain state_dict with no architecture; pass --arch torchvision:NAME "
                        "(or file.py:factory), or save it as {'arch': SPEC, 'state_dict': ...}"
                    )
                if not isinstance(arch_spec, str) or not is_arch_spec(arch_spec):
                    raise UsageError(f"MODEL {path}: its 'arch' entry {arch_spec!r} is not an architecture spec")
                model = build_arch(arch_spec, "--arch" if arch else f"MODEL {path} 'arch'")
                load_weights_into(model, sd, str(path), arch_spec)
                kind = "checkpoint"
                if isinstance(obj, dict) and obj.get("input_shape"):
                    stored_shape = tuple(int(v) for v in obj["input_shape"])
    else:
        if not is_arch_spec(spec):
            raise UsageError(
                f"MODEL {spec!r} is neither an existing file nor an architecture spec "
                "(torchvision:NAME, file.py:factory, package.module:factory)"
            )
        if arch is not None:
            raise UsageError(f"--arch is for weight files; MODEL {spec!r} names the architecture already")
        model = build_arch(spec)
        arch_spec, kind = absolute_spec(spec), ("torchvision" if spec.startswith("torchvision:") else "factory")
        if weights is not None:
            wpath = Path(weights)
            load_weights_into(model, read_weights(wpath), str(wpath), spec)

    model = model.cpu().eval()
    name = arch_name(arch_spec)
    chosen = get_preset(preset) if preset else match_preset(name, type(model).__name__)
    shape = input_shape or stored_shape or (chosen.input_shape_for(name) if chosen else DEFAULT_INPUT_SHAPE)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(*shape, generator=generator)
    if check_forward:
        check_accepts(model, example, shape)
    source = path if path.exists() else (Path(weights) if weights else None)
    digest = None
    if source is not None:
        digest = sha256_of(source / "model.safetensors") if source.is_dir() else sha256_of(source)
    return LoadedModel(
        model=model,
        example_input=example,
        input_shape=tuple(shape),
        arch=arch_spec,
        kind=kind,
        source=source,
        source_sha256=digest,
        preset=chosen,
        recipe=recipe,
    )


def check_accepts(model, example, shape) -> None:
    import torch

    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        raise UsageError(
            f"--input-shape {','.join(map(str, shape))} is rejected by the model ({type(exc).__name__}: {_first_line(exc)}); "
            "pass the shape it expects, e.g. --input-shape 1,3,224,224"
        ) from exc
