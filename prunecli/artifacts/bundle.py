"""The on-disk bundle: a pruned model that loads without pickles and without running code from the bundle.

A bundle directory holds:

- ``model.safetensors``: the pruned weights and buffers;
- ``recipe.json``: the source architecture spec, the input shape, the list of plans applied in order (a
  bundle pruned again appends a plan) from which :func:`load_bundle` rebuilds the module, and the sha256
  of ``model.onnx`` and ``model.safetensors``, checked by every reader;
- ``model.onnx``: the verified ONNX export, weights inside (self-contained) below 2 GB;
- ``report.json`` / ``report.md``: what was asked, what was achieved, and how it was checked.

The recipe is data. Its architecture spec is rebuilt only if it is a data spec (``torchvision:NAME``,
``prunecli:NAME``); a bundle of a model built by user code (``file.py:factory``) records that spec but
rebuilding it needs the user to pass it: ``--arch SPEC`` on the command line, ``load_bundle(path, arch=SPEC)``
in Python.

Load it in Python::

    import prunecli
    model = prunecli.load_bundle("pruned/")   # an eval-mode torch.nn.Module
"""

from __future__ import annotations

import json
from pathlib import Path

from prunecli.core.errors import RuntimeFailure, UsageError
from prunecli.graph.plans import Plan, PlanFormatError
from prunecli.models.arch import build_arch, is_data_spec
from prunecli.models.formats import load_weights_into, read_safetensors, sha256_of

FORMAT = "prunecli-bundle"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # v1 bundles carry no file hashes
RECIPE = "recipe.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
INT8_ONNX = "model.int8.onnx"  # `prune --quantize int8`
HASHED = (ONNX, WEIGHTS, INT8_ONNX)


def is_bundle(path: Path) -> bool:
    return (Path(path) / RECIPE).is_file()


def write_weights(model, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))


def make_recipe(source: dict, input_shape, plans: list[dict], directory: Path | None = None) -> dict:
    """The recipe; with ``directory``, the sha256 of the bundle files already written there."""
    recipe = {"format": FORMAT, "version": VERSION, "source": source, "input_shape": list(input_shape), "plans": plans}
    if directory is not None:
        recipe["files"] = {name: sha256_of(Path(directory) / name) for name in HASHED if (Path(directory) / name).is_file()}
    return recipe


def read_recipe_file(file: Path) -> dict:
    file = Path(file)
    try:
        recipe = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{file} is unreadable ({exc}); re-create the bundle") from exc
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT or recipe.get("version") not in READABLE_VERSIONS:
        raise UsageError(f"{file} is not a {FORMAT} v{VERSION} recipe; re-create the bundle")
    shape = recipe.get("input_shape")
    if not (isinstance(shape, list) and len(shape) >= 2 and all(isinstance(d, int) and 0 < d < 1 << 20 for d in shape)):
        raise UsageError(f"{file}: input_shape {shape!r} is not a list of positive integers; re-create the bundle")
    if not isinstance(recipe.get("plans"), list) or not isinstance(recipe.get("source"), dict):
        raise UsageError(f"{file}: 'plans' or 'source' is missing; re-create the bundle")
    return recipe


def read_recipe(path: Path) -> dict:
    return read_recipe_file(Path(path) / RECIPE)


def verify_file(bundle: Path, name: str, recipe: dict | None = None) -> Path:
    """The path of ``bundle/name`` after checking it against the recipe's sha256 (exit 2 when it differs)."""
    bundle = Path(bundle)
    recipe = recipe if recipe is not None else read_recipe(bundle)
    path = bundle / name
    if not path.is_file():
        raise UsageError(f"bundle {bundle}: {name} is missing; re-create the bundle")
    expected = recipe.get("files", {}).get(name)
    if recipe.get("version", 1) >= 2 and expected is None:
        raise UsageError(f"bundle {bundle}: {RECIPE} records no sha256 for {name}; re-create the bundle")
    if expected is not None and sha256_of(path) != expected:
        raise UsageError(f"bundle {bundle}: {name} does not match the sha256 in {RECIPE} (corrupted or edited); "
                         "re-create the bundle")
    return path


def source_arch(bundle: Path, recipe: dict, arch: str | None) -> str:
    """The spec to rebuild from: the one the user passed, else the recipe's (a data spec only)."""
    if arch is not None:
        return arch
    recorded = recipe["source"].get("arch")
    if not recorded:
        raise UsageError(f"bundle {bundle}: {RECIPE} names no architecture; pass --arch SPEC")
    if not is_data_spec(recorded):
        raise UsageError(
            f"bundle {bundle}: {RECIPE} source.arch is {recorded!r}, user code that prunecli never runs from a file; "
            f"if you trust it, pass it yourself: --arch {recorded} (Python: load_bundle(path, arch=...))"
        )
    return recorded


def rebuild_structure(recipe: dict, arch: str, origin: str | None = None):
    """The source architecture with every plan of the recipe applied (weights not loaded).

    ``origin`` describes where ``arch`` was read when it came from a file (then it must be a data spec);
    None means the user passed it.
    """
    import torch

    from prunecli.graph.shrink import remove_channels_

    model = build_arch(arch, "--arch", from_file=origin).cpu().eval()
    example = torch.zeros(*recipe["input_shape"])
    for i, data in enumerate(recipe["plans"]):
        try:
            plan = Plan.from_json(data)
            _check_widths(model, plan)
            remove_channels_(model, example, plan.removed())
        except (PlanFormatError, RuntimeFailure, KeyError, TypeError, ValueError, IndexError) as exc:
            where = origin or "the recipe"
            raise UsageError(f"{where}: plan {i + 1} does not apply to {arch} ({exc}); "
                             "the recipe is damaged or --arch is not its architecture") from exc
    return model


def _check_widths(model, plan) -> None:
    from prunecli.graph.groups import root_widths

    modules = dict(model.named_modules())
    widths = root_widths(model, [g.root for g in plan.groups])
    for g in plan.groups:
        if g.root not in modules:
            raise PlanFormatError(f"layer {g.root!r} is not in the model")
        width = widths[g.root]
        if width is not None and int(width) % g.channels:  # a multiple: each group channel stands for several
            raise PlanFormatError(f"layer {g.root} has {width} channels, the plan says {g.channels}")


def load_bundle_model(path: Path, arch: str | None = None):
    """(model, recipe): rebuild the architecture, apply every plan, load the verified safetensors weights."""
    path = Path(path)
    recipe = read_recipe(path)
    spec = source_arch(path, recipe, arch)
    weights = verify_file(path, WEIGHTS, recipe)
    model = rebuild_structure(recipe, spec, origin=None if arch is not None else f"bundle {path} {RECIPE} source.arch")
    state_dict, _ = read_safetensors(weights, f"bundle {path}:")
    load_weights_into(model, state_dict, str(weights), spec)
    return model.eval(), recipe


def load_bundle(path, arch: str | None = None) -> "torch.nn.Module":  # noqa: F821
    """Rebuild a pruned model from a bundle directory, without unpickling anything.

    ``arch`` is needed when the bundle was made from user code (``file.py:factory``): prunecli does not run
    code named in a file, so pass the spec you trust.
    """
    return load_bundle_model(Path(path), arch=arch)[0]
