"""The on-disk bundle: a pruned model that loads without pickles.

A bundle directory holds:

- ``model.safetensors``: the pruned weights and buffers;
- ``recipe.json``: the source architecture spec, the input shape and the list of plans applied in
  order (a bundle pruned again appends a plan), from which :func:`load_bundle` rebuilds the module;
- ``model.onnx``: the verified ONNX export;
- ``report.json`` / ``report.md``: what was asked, what was achieved, and how it was checked.

Load it in Python::

    import prunecli
    model = prunecli.load_bundle("pruned/")   # an eval-mode torch.nn.Module

Bundles are written to a temporary sibling directory that is renamed into place at the end, so an
interrupted run leaves no half-written bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UsageError

FORMAT = "prunecli-bundle"
VERSION = 1
RECIPE = "recipe.json"
WEIGHTS = "model.safetensors"


def is_bundle(path: Path) -> bool:
    return (Path(path) / RECIPE).is_file()


def check_out_dir(out: Path, force: bool, flag: str = "--out") -> None:
    """Refuse a non-empty output unless --force (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} exists and is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{flag} {out} is not empty; pass --force to replace it, or choose another directory")


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool, *, merge: bool = False):
    """Yield a temporary directory that replaces ``out`` only if the block finishes.

    With ``merge`` (a fine-tuning run whose ``out`` already holds its checkpoints) the staged files are
    moved into ``out`` one by one, ``recipe.json`` last: ``out`` is a bundle only once it is complete.
    """
    out = Path(out)
    if not merge:
        check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if merge and out.is_dir():
            (out / RECIPE).unlink(missing_ok=True)
            for name in sorted(os.listdir(tmp), key=lambda n: n == RECIPE):
                os.replace(tmp / name, out / name)
        elif out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_weights(model, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))


def make_recipe(source: dict, input_shape, plans: list[dict]) -> dict:
    return {"format": FORMAT, "version": VERSION, "source": source, "input_shape": list(input_shape), "plans": plans}


def read_recipe_file(file: Path) -> dict:
    file = Path(file)
    try:
        recipe = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{file} is unreadable ({exc}); re-create the bundle") from exc
    if recipe.get("format") != FORMAT or recipe.get("version") != VERSION:
        raise UsageError(f"{file} is not a {FORMAT} v{VERSION} recipe")
    return recipe


def read_recipe(path: Path) -> dict:
    return read_recipe_file(Path(path) / RECIPE)


def rebuild_structure(recipe: dict):
    """The source architecture with every plan of the recipe applied (weights not loaded)."""
    import torch

    from .arch import build_arch
    from .plan import Plan
    from .shrink import remove_channels_

    arch = recipe["source"].get("arch")
    if not arch:
        raise UsageError("the recipe names no architecture to rebuild from")
    model = build_arch(arch, "recipe source arch").cpu().eval()
    example = torch.zeros(*recipe["input_shape"])
    for plan in recipe["plans"]:
        remove_channels_(model, example, Plan.from_json(plan).removed())
    return model


def load_bundle_model(path: Path):
    """(model, recipe): rebuild the architecture, apply every plan, load the safetensors weights."""
    from .load import load_weights_into

    path = Path(path)
    recipe = read_recipe(path)
    arch = recipe["source"].get("arch")
    model = rebuild_structure(recipe)
    from safetensors.torch import load_file

    weights = path / WEIGHTS
    if not weights.is_file():
        raise UsageError(f"bundle {path}: {WEIGHTS} is missing")
    load_weights_into(model, load_file(str(weights)), str(weights), arch)
    return model.eval(), recipe


def load_bundle(path) -> "torch.nn.Module":  # noqa: F821
    """Rebuild a pruned model from a bundle directory, without unpickling anything."""
    return load_bundle_model(Path(path))[0]
