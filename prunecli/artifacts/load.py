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
    Rebuilt from its JSON recipe and safetensors weights (see :mod:`prunecli.artifacts.bundle`).

A spec read from a file (a checkpoint's ``arch``, safetensors metadata, a bundle's recipe) may only be a
data spec (``torchvision:NAME``, ``prunecli:NAME``): specs naming code run only when typed (:mod:`prunecli.models.arch`).

Refused: a pickled ``nn.Module`` (``torch.save(model)``) unless the user passes ``--trust-pickle``,
because unpickling it executes code from the file; TorchScript archives and ONNX files, which
cannot be structurally pruned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli.artifacts.bundle import is_bundle, load_bundle_model
from prunecli.core.errors import UsageError
from prunecli.models.arch import (
    absolute_spec,
    arch_name,
    build_arch,
    is_arch_spec,
    is_data_spec,
    structure_spec,
)
from prunecli.models.formats import (
    check_file,
    check_finite,
    first_line,
    load_weights_into,
    read_safetensors,
    read_weights,
    refuse_unprunable_formats,
    sha256_of,
    torch_load,
    unwrap_state_dict,
)
from prunecli.models.presets import Preset, get_preset, match_preset

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
CHECKPOINT_ARCH_KEY = "arch"
SAFETENSORS_ARCH_KEY = "prunecli.arch"
# An example input or its activations above this share of the available memory is refused before allocating.
MEMORY_SHARE = 0.5


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
def declared_input_shape(model) -> tuple[int, ...] | None:
    """The input size a model declares for itself (timm's ``pretrained_cfg["input_size"]``, e.g. (3, 160, 160)),
    as a batch-1 shape; None when it declares none. A ViT built for one size resamples its position embedding
    (bicubic, antialiased) at any other, which is neither what it was trained at nor exportable to ONNX."""
    config = getattr(model, "pretrained_cfg", None)
    size = config.get("input_size") if isinstance(config, dict) else None
    if isinstance(size, (tuple, list)) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size):
        return (1, *size)
    return None


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


def _stored_shape(value: Any, origin: str) -> tuple[int, ...]:
    """An input shape read from a file: a list of positive integers, nothing else."""
    if isinstance(value, str):
        return parse_input_shape(value, origin)
    if isinstance(value, (list, tuple)) and len(value) >= 2 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        return tuple(int(d) for d in value)
    raise UsageError(f"{origin} is {value!r}, not a list of positive integers; pass --input-shape")


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a conservative 8 GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_shape_fits(model, shape: tuple[int, ...], flag: str = "--input-shape") -> None:
    """Refuse an input whose tensor, or whose forward pass's activations (summed over layers, measured on
    the meta device: shapes only, nothing allocated), would not fit in the available memory."""
    import copy
    import math

    import torch

    budget = MEMORY_SHARE * available_memory_bytes()
    text = ",".join(map(str, shape))
    input_bytes = 4 * math.prod(shape)
    if input_bytes > budget:
        raise UsageError(f"{flag} {text}: the input alone is {_gib(input_bytes)}, more than half the available "
                         f"{_gib(2 * budget)}; pass a smaller shape (e.g. 1,3,224,224)")
    total = [0]

    def count(_module, _inputs, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    try:
        meta = copy.deepcopy(model).to("meta")
        hooks = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
        with torch.no_grad():
            meta(torch.empty(*shape, device="meta"))
        for h in hooks:
            h.remove()
    except Exception:  # some ops have no meta kernel; the real forward pass below still checks the shape
        return
    if total[0] > budget:
        raise UsageError(f"{flag} {text}: one forward pass holds about {_gib(total[0])} of activations, more than "
                         f"half the available {_gib(2 * budget)}; pass a smaller shape (e.g. 1,3,224,224)")


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
    """Load MODEL (see module docstring); raise :class:`UsageError` with one actionable line on bad input.

    ``spec``, ``arch`` and ``weights`` are what the user typed: a code spec among them runs. Specs read from
    files run only if they are data specs.
    """
    import torch

    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    if arch is not None and not is_arch_spec(arch):
        raise UsageError(f"--arch {arch!r} is not an architecture spec; use torchvision:NAME or file.py:factory")

    path = Path(spec)
    stored_shape: tuple[int, ...] | None = None
    recipe = None  # set for bundles
    if path.is_dir():
        if not is_bundle(path):
            raise UsageError(f"MODEL {path} is a directory but not a prunecli bundle (no recipe.json in it)")
        if weights is not None:
            raise UsageError("--weights cannot be used with a bundle MODEL: the bundle carries its weights")
        model, recipe = load_bundle_model(path, arch=absolute_spec(arch) if arch else None)
        kind, stored_shape = "bundle", tuple(recipe["input_shape"])
        arch_spec = absolute_spec(arch) if arch else recipe["source"].get("arch")
    elif path.exists() or (not is_arch_spec(spec) and path.suffix):
        check_file(path, "MODEL")
        refuse_unprunable_formats(path, "MODEL")
        if weights is not None:
            raise UsageError(f"--weights is for architecture MODELs (torchvision:NAME, file.py:factory); {path} is a file already")
        typed = absolute_spec(arch) if arch else None
        if path.suffix.lower() == ".safetensors":
            sd, meta = read_safetensors(path, "MODEL")
            arch_spec = typed or meta.get(SAFETENSORS_ARCH_KEY)
            if not arch_spec:
                raise UsageError(f"MODEL {path} holds weights only; pass --arch torchvision:NAME (or file.py:factory) to name the architecture")
            model = build_arch(arch_spec, "--arch",
                               from_file=None if typed else f"MODEL {path} metadata '{SAFETENSORS_ARCH_KEY}'")
            load_weights_into(model, sd, str(path), arch_spec)
            kind = "safetensors"
            if meta.get("prunecli.input_shape"):
                stored_shape = _stored_shape(meta["prunecli.input_shape"], f"MODEL {path} metadata 'prunecli.input_shape'")
        else:
            obj = torch_load(path, "MODEL", trust_pickle)
            if isinstance(obj, torch.nn.Module):  # only reachable with --trust-pickle
                model, arch_spec, kind = obj, typed, "pickle"
            else:
                arch_spec = typed or (obj.get(CHECKPOINT_ARCH_KEY) if isinstance(obj, dict) else None)
                sd = unwrap_state_dict(obj)
                if sd is None:
                    raise UsageError(
                        f"MODEL {path} holds {type(obj).__name__} but no state_dict; save {{'arch': SPEC, 'state_dict': model.state_dict()}}"
                    )
                if not arch_spec:
                    raise UsageError(
                        f"MODEL {path} is a plain state_dict with no architecture; pass --arch torchvision:NAME "
                        "(or file.py:factory), or save it as {'arch': SPEC, 'state_dict': ...}"
                    )
                model = build_arch(arch_spec, "--arch", from_file=None if typed else f"MODEL {path} key 'arch'")
                load_weights_into(model, sd, str(path), arch_spec)
                kind = "checkpoint"
                if isinstance(obj, dict) and obj.get("input_shape") is not None:
                    stored_shape = _stored_shape(obj["input_shape"], f"MODEL {path} key 'input_shape'")
    else:
        if not is_arch_spec(spec):
            raise UsageError(
                f"MODEL {spec!r} is neither an existing file nor an architecture spec "
                "(torchvision:NAME, timm:NAME, prunecli:NAME, file.py:factory, package.module:factory)"
            )
        if arch is not None:
            raise UsageError(f"--arch is for weight files and bundles; MODEL {spec!r} names the architecture already")
        model = build_arch(spec)
        arch_spec = structure_spec(absolute_spec(spec))
        kind = spec.split(":")[0] if is_data_spec(spec) else "factory"
        if weights is not None:
            wpath = Path(weights)
            load_weights_into(model, read_weights(wpath), str(wpath), spec)

    model = model.cpu().eval()
    source = path if path.exists() else (Path(weights) if weights else None)
    check_finite(model, f"MODEL {source or spec}")
    name = arch_name(arch_spec)
    chosen = get_preset(preset) if preset else match_preset(name, type(model).__name__)
    shape = (input_shape or stored_shape or declared_input_shape(model)
             or (chosen.input_shape_for(name) if chosen else DEFAULT_INPUT_SHAPE))
    check_shape_fits(model, tuple(shape), "--input-shape" if input_shape else "input shape (pass --input-shape)")
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(*shape, generator=generator)
    if check_forward:
        check_accepts(model, example, shape)
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
            f"--input-shape {','.join(map(str, shape))} is rejected by the model ({type(exc).__name__}: {first_line(exc)}); "
            "pass the shape it expects, e.g. --input-shape 1,3,224,224"
        ) from exc
