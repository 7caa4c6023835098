"""The bad-input table: every row is one command line that must be refused cleanly.

Each row is ``(args, files the row needs, expected exit code, message fragment)``. For every row the test asserts:
exit code; exactly one line on stderr, starting ``error:`` and holding the fragment; no traceback; nothing left
in or beside ``--out`` (the working directory's tree is unchanged but for what the row itself created); input
files byte-identical; and no marker file: every code-carrying file in the table would create ``MARKER`` if
prunecli ran its payload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import sha256
from safetensors.torch import save_file

SHAPE = ["--input-shape", "1,3,16,16"]
TINY = "tinynets:tiny_resnet:width=8"
MARKER = "MARKER"


def _payload(d: Path) -> str:
    """A factory file whose import creates MARKER (it would run if prunecli imported a spec read from a file)."""
    (d / "payload.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(d / MARKER)!r}).write_text('payload ran')\n"
        "from tinynets import tiny_resnet\n\n"
        "def build():\n    return tiny_resnet(width=8)\n"
    )
    return f"{d / 'payload.py'}:build"


def _shell(d: Path) -> str:
    return f"os:system:command=touch {d / MARKER}"


def _state_dict():
    from tinynets import tiny_resnet

    torch.manual_seed(0)
    return tiny_resnet(width=8).state_dict()


def _ckpt(d: Path, name: str, **extra) -> None:
    torch.save({"state_dict": _state_dict(), "input_shape": [1, 3, 16, 16], **extra}, d / name)


def _bundle(d: Path, name: str) -> Path:
    """A real bundle of a torchvision model (a data spec), pruned data-free."""
    from prunecli.artifacts.load import load_model
    from prunecli.pipeline.config import PruneConfig
    from prunecli.pipeline.prune import run_prune
    from prunecli.plan.targets import BudgetTarget

    loaded = load_model("torchvision:resnet18:num_classes=4", input_shape="1,3,32,32")
    run_prune(loaded, PruneConfig(flops=BudgetTarget("flops", 0.5)), d / name, measure_latency=False)
    return d / name


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("bundle"), "b")


def _copy_bundle(good: Path, d: Path, name: str = "b") -> Path:
    shutil.copytree(good, d / name)
    return d / name


def _edit_recipe(path: Path, edit) -> None:
    recipe = json.loads((path / "recipe.json").read_text())
    edit(recipe)
    (path / "recipe.json").write_text(json.dumps(recipe))


def _bad_data_factories(d: Path) -> None:
    (d / "data.py").write_text(
        "import torch\n"
        "def number():\n    return 3\n"
        "def pair_of_ints():\n    return 1, 2\n"
        "def generators():\n"
        "    gen = lambda: iter([(torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))])\n"
        "    return gen(), gen()\n"
        "def wrong_size():\n"
        "    ds = torch.utils.data.TensorDataset(torch.randn(8, 3, 8, 8), torch.zeros(8, dtype=torch.long))\n"
        "    loader = torch.utils.data.DataLoader(ds, batch_size=4)\n"
        "    return loader, loader\n"
    )


def _bad_jpeg_tree(d: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            (d / "imgs" / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "imgs" / split / cls / f"{i}.jpg")
    broken = d / "imgs" / "train" / "a" / "0.jpg"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated: the header survives, the pixels do not


def _nan_weights(d: Path) -> None:
    sd = _state_dict()
    sd["conv_a.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"state_dict": sd}, d / "nan.pt")


# name -> builder(d, good_bundle); each writes files into the row's directory d
FILES = {
    "model.pt": lambda d, g: _ckpt(d, "model.pt"),
    "nan.pt": lambda d, g: _nan_weights(d),
    "evil_py.pt": lambda d, g: _ckpt(d, "evil_py.pt", arch=_payload(d)),
    "evil_os.pt": lambda d, g: _ckpt(d, "evil_os.pt", arch=_shell(d)),
    "evil_shape.pt": lambda d, g: _ckpt(d, "evil_shape.pt", arch="torchvision:resnet18", input_shape="rm -rf /"),
    "download.pt": lambda d, g: _ckpt(d, "download.pt", arch="torchvision:resnet18:weights=DEFAULT"),
    "evil.safetensors": lambda d, g: save_file(_state_dict(), str(d / "evil.safetensors"),
                                               metadata={"prunecli.arch": _shell(d)}),
    "evil_py.safetensors": lambda d, g: save_file(_state_dict(), str(d / "evil_py.safetensors"),
                                                  metadata={"prunecli.arch": _payload(d)}),
    "bundle": lambda d, g: _copy_bundle(g, d, "bundle"),
    "evil_bundle": lambda d, g: _edit_recipe(_copy_bundle(g, d, "evil_bundle"),
                                             lambda r: r["source"].update(arch=_payload(d))),
    "evil_os_bundle": lambda d, g: _edit_recipe(_copy_bundle(g, d, "evil_os_bundle"),
                                                lambda r: r["source"].update(arch=_shell(d))),
    "bad_layer_bundle": lambda d, g: _edit_recipe(_copy_bundle(g, d, "bad_layer_bundle"),
                                                  lambda r: r["plans"][0]["groups"][0].update(root="no.such.layer")),
    "bad_keep_bundle": lambda d, g: _edit_recipe(_copy_bundle(g, d, "bad_keep_bundle"),
                                                 lambda r: r["plans"][0]["groups"][0].update(keep=[999])),
    "truncated_bundle": lambda d, g: (lambda b: (b / "model.safetensors").write_bytes(
        (b / "model.safetensors").read_bytes()[:1000]))(_copy_bundle(g, d, "truncated_bundle")),
    "edited_onnx_bundle": lambda d, g: (lambda b: (b / "model.onnx").write_bytes(
        (b / "model.onnx").read_bytes() + b"\0"))(_copy_bundle(g, d, "edited_onnx_bundle")),
    "json_bundle": lambda d, g: (lambda b: (b / "recipe.json").write_text("{not json"))(_copy_bundle(g, d, "json_bundle")),
    "evil_resume": lambda d, g: _evil_resume(d),
    "data.py": lambda d, g: _bad_data_factories(d),
    "imgs": lambda d, g: _bad_jpeg_tree(d),
    "full": lambda d, g: ((d / "full").mkdir(), (d / "full" / "keep.txt").write_text("mine")),
    "outdir_with_model": lambda d, g: ((d / "o").mkdir(), _ckpt(d / "o", "model.pt")),
}


def _evil_resume(d: Path) -> None:
    checkpoints = d / "o" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "recipe.json").write_text(json.dumps({
        "format": "prunecli-bundle", "version": 2, "source": {"arch": _payload(d)}, "input_shape": [1, 3, 16, 16],
        "plans": []}))
    (checkpoints / "state.json").write_text(json.dumps({"fit_cost": {}, "round_to": 1}))


PRUNE = ["prune", TINY, *SHAPE, "--no-latency"]
R = "--arch", TINY  # for weights files with no usable arch
# (args, files, exit code, message fragment)
ROWS = [
    # --- code carried by files: refused, payload never runs
    (["inspect", "{d}/evil_py.pt"], ["evil_py.pt"], 2, "never runs code named inside a file"),
    (["inspect", "{d}/evil_os.pt"], ["evil_os.pt"], 2, "--arch os:system"),
    (["prune", "{d}/evil_py.pt", "--flops", "0.5", "--out", "{d}/o"], ["evil_py.pt"], 2, "key 'arch'"),
    (["export", "{d}/evil_os.pt", "--out", "{d}/m.onnx"], ["evil_os.pt"], 2, "names a module to import"),
    (["bench", "{d}/evil_py.pt"], ["evil_py.pt"], 2, "names a Python file to import"),
    (["inspect", "{d}/evil.safetensors"], ["evil.safetensors"], 2, "metadata 'prunecli.arch'"),
    (["prune", "{d}/evil_py.safetensors", "--flops", "0.5", "--out", "{d}/o"], ["evil_py.safetensors"], 2, "never runs code"),
    (["inspect", "{d}/evil_bundle"], ["evil_bundle"], 2, "source.arch"),
    (["prune", "{d}/evil_os_bundle", "--flops", "0.5", "--out", "{d}/o"], ["evil_os_bundle"], 2, "never runs from a file"),
    (["export", "{d}/evil_bundle", "--out", "{d}/m.onnx"], ["evil_bundle"], 2, "--arch"),
    (["bench", "{d}/bundle", "--baseline", "{d}/evil.safetensors"], ["bundle", "evil.safetensors"], 2, "metadata"),
    (["sensitivity", "{d}/evil_py.pt", "--data", "synthetic:32", "--out", "{d}/o"], ["evil_py.pt"], 2, "key 'arch'"),
    ([*PRUNE, "--flops", "0.5", "--data", "synthetic:32", "--epochs", "1", "--resume", "--out", "{d}/o"],
     ["evil_resume"], 2, "was made from"),
    (["inspect", "{d}/download.pt"], ["download.pt"], 2, "would download weights"),
    (["inspect", "{d}/evil_shape.pt", *R], ["evil_shape.pt"], 2, "key 'input_shape'"),
    # --- damaged bundles and files name the file
    (["inspect", "{d}/truncated_bundle"], ["truncated_bundle"], 2, "model.safetensors does not match the sha256"),
    (["bench", "{d}/edited_onnx_bundle"], ["edited_onnx_bundle"], 2, "model.onnx does not match the sha256"),
    (["inspect", "{d}/bad_layer_bundle"], ["bad_layer_bundle"], 2, "plan 1 does not apply"),
    (["inspect", "{d}/bad_keep_bundle"], ["bad_keep_bundle"], 2, "distinct indices"),
    (["inspect", "{d}/json_bundle"], ["json_bundle"], 2, "recipe.json is unreadable"),
    (["inspect", "{d}/nan.pt", *R], ["nan.pt"], 2, "tensor conv_a.weight holds 1 non-finite"),
    (["prune", "{d}/nan.pt", *R, "--flops", "0.5", "--out", "{d}/o"], ["nan.pt"], 2, "non-finite"),
    # --- budgets
    ([*PRUNE, "--flops", "1.5", "--out", "{d}/o"], [], 2, "a bare number is a fraction"),
    ([*PRUNE, "--flops", "1", "--out", "{d}/o"], [], 2, "at or above the dense model"),
    ([*PRUNE, "--params", "5G", "--out", "{d}/o"], [], 2, "at or above the dense model"),
    ([*PRUNE, "--flops", "half", "--out", "{d}/o"], [], 2, "is not a budget"),
    ([*PRUNE, "--flops", "0", "--out", "{d}/o"], [], 2, "must be in (0, 1]"),
    ([*PRUNE, "--out", "{d}/o"], [], 2, "give a budget"),
    ([*PRUNE, "--flops", "0.00001", "--out", "{d}/o"], [], 2, "not reachable"),
    ([*PRUNE, "--flops", "0.5", "--tolerance", "nan", "--out", "{d}/o"], [], 2, "tolerance"),
    # --- fine-tuning numbers
    ([*PRUNE, "--flops", "0.5", "--lr", "nan", "--out", "{d}/o"], [], 2, "--lr nan must be a finite number"),
    ([*PRUNE, "--flops", "0.5", "--lr", "inf", "--out", "{d}/o"], [], 2, "--lr inf"),
    ([*PRUNE, "--flops", "0.5", "--lr", "-0.1", "--out", "{d}/o"], [], 2, "--lr -0.1 must be > 0"),
    ([*PRUNE, "--flops", "0.5", "--temperature", "0", "--out", "{d}/o"], [], 2, "--temperature"),
    ([*PRUNE, "--flops", "0.5", "--temperature", "nan", "--out", "{d}/o"], [], 2, "--temperature nan"),
    ([*PRUNE, "--flops", "0.5", "--distill-weight", "2", "--out", "{d}/o"], [], 2, "--distill-weight"),
    ([*PRUNE, "--flops", "0.5", "--weight-decay", "-1", "--out", "{d}/o"], [], 2, "--weight-decay"),
    ([*PRUNE, "--flops", "0.5", "--epochs", "-1", "--out", "{d}/o"], [], 2, "--epochs -1"),
    ([*PRUNE, "--flops", "0.5", "--epochs", "2", "--out", "{d}/o"], [], 2, "needs --data"),
    ([*PRUNE, "--flops", "0.5", "--optimizer", "lbfgs", "--out", "{d}/o"], [], 2, "--optimizer"),
    # --- data
    ([*PRUNE, "--flops", "0.5", "--data", "synthetic:0", "--out", "{d}/o"], [], 2, "synthetic:N needs N >= 10"),
    ([*PRUNE, "--flops", "0.5", "--data", "mnist", "--out", "{d}/o"], [], 2, "is not a data spec"),
    ([*PRUNE, "--flops", "0.5", "--data", "imagefolder:{d}/none", "--out", "{d}/o"], [], 2, "is missing"),
    ([*PRUNE, "--flops", "0.5", "--data", "{d}/data.py:number", "--out", "{d}/o"], ["data.py"], 2, "must return"),
    ([*PRUNE, "--flops", "0.5", "--data", "{d}/data.py:pair_of_ints", "--out", "{d}/o"], ["data.py"], 2, "re-iterable"),
    ([*PRUNE, "--flops", "0.5", "--data", "{d}/data.py:generators", "--out", "{d}/o"], ["data.py"], 2, "re-iterable"),
    ([*PRUNE, "--flops", "0.5", "--data", "{d}/data.py:wrong_size", "--out", "{d}/o"], ["data.py"], 2, "images are (3, 8, 8)"),
    ([*PRUNE, "--flops", "0.5", "--data", "imagefolder:{d}/imgs", "--epochs", "1", "--batch-size", "4", "--out", "{d}/o"],
     ["imgs"], 2, "0.jpg cannot be decoded"),
    ([*PRUNE, "--flops", "0.5", "--batch-size", "0", "--data", "synthetic:32", "--out", "{d}/o"], [], 2, "--batch-size"),
    # --- choices and constraints
    ([*PRUNE, "--flops", "0.5", "--criterion", "l3", "--out", "{d}/o"], [], 2, "did you mean"),
    ([*PRUNE, "--flops", "0.5", "--allocation", "magic", "--out", "{d}/o"], [], 2, "--allocation"),
    ([*PRUNE, "--flops", "0.5", "--schedule", "cubic", "--out", "{d}/o"], [], 2, "--schedule"),
    ([*PRUNE, "--flops", "0.5", "--allocation", "sensitivity", "--out", "{d}/o"], [], 2, "pass --data"),
    ([*PRUNE, "--flops", "0.5", "--criterion", "taylor", "--out", "{d}/o"], [], 2, "needs training data"),
    ([*PRUNE, "--flops", "0.5", "--round-to", "0", "--out", "{d}/o"], [], 2, "--round-to"),
    ([*PRUNE, "--flops", "0.5", "--min-channels", "0", "--out", "{d}/o"], [], 2, "--min-channels"),
    ([*PRUNE, "--flops", "0.5", "--max-group-prune", "1.5", "--out", "{d}/o"], [], 2, "--max-group-prune"),
    ([*PRUNE, "--flops", "0.5", "--opset", "3", "--out", "{d}/o"], [], 2, "--opset"),
    ([*PRUNE, "--flops", "0.5", "--ignore", "*", "--out", "{d}/o"], [], 2, "leaves no prunable channel group"),
    ([*PRUNE, "--flops", "0.5", "--ignore", "layer9*", "--out", "{d}/o"], [], 2, "matches no module"),
    (["prune", TINY, "--input-shape", "1,3,100000,100000", "--flops", "0.5", "--out", "{d}/o"], [], 2, "the input alone"),
    (["prune", TINY, "--input-shape", "1,3,20000,20000", "--flops", "0.5", "--out", "{d}/o"], [], 2, "of activations"),
    (["prune", TINY, "--input-shape", "1;3", "--flops", "0.5", "--out", "{d}/o"], [], 2, "is not a shape"),
    # --- outputs never touch inputs
    (["prune", "{d}/model.pt", *R, "--flops", "0.5", "--out", "{d}/model.pt"], ["model.pt"], 2, "exists and is a file"),
    (["prune", "{d}/o/model.pt", *R, "--flops", "0.5", "--out", "{d}/o", "--force"], ["outdir_with_model"], 2,
     "contains the input"),
    (["prune", "{d}/bundle", "--flops", "0.5", "--out", "{d}/bundle/again", "--force"], ["bundle"], 2, "lies inside the input"),
    (["prune", "{d}/bundle", "--flops", "0.5", "--out", "{d}/bundle", "--force"], ["bundle"], 2, "is the input"),
    ([*PRUNE, "--flops", "0.5", "--out", "/proc/prunecli-out"], [], 2, "cannot write in /proc"),
    ([*PRUNE, "--flops", "0.5", "--out", "{d}/full"], ["full"], 2, "is not empty; pass --force"),
    (["export", "{d}/model.pt", *R, "--out", "{d}/model.pt", "--force"], ["model.pt"], 2, "ending in .onnx"),
    (["export", TINY, *SHAPE, "--out", "{d}/m.txt"], [], 2, "ending in .onnx"),
    (["sensitivity", "{d}/model.pt", *R, "--data", "synthetic:32", "--out", "{d}/full"], ["model.pt", "full"], 2, "not empty"),
    # --- bench
    (["bench", "{d}/bundle", "--baseline", "{d}/bundle", "--max-latency-ratio", "-1"], ["bundle"], 2, "must be > 0"),
    (["bench", "{d}/bundle", "--baseline", "{d}/bundle", "--max-latency-ratio", "nan"], ["bundle"], 2, "finite"),
    (["bench", "{d}/bundle", "--max-latency-ms", "0"], ["bundle"], 2, "--max-latency-ms"),
    (["bench", "{d}/bundle", "--runs", "0"], ["bundle"], 2, "--runs 0"),
    (["bench", "{d}/bundle", "--threads", "0"], ["bundle"], 2, "--threads"),
    (["bench", "{d}/bundle", "--max-latency-ratio", "0.5"], ["bundle"], 2, "needs --baseline"),
    (["bench", "{d}/bundle", "--stat", "p42"], ["bundle"], 2, "--stat"),
    (["bench", "{d}/none.onnx"], [], 2, "file not found"),
    # --- demo: every flag before the dense model trains
    (["demo", "--epochs", "-1", "--out", "{d}/demo"], [], 2, "--epochs -1"),
    (["demo", "--flops", "1.5", "--out", "{d}/demo"], [], 2, "--flops 1.5"),
    (["demo", "--flops", "0", "--out", "{d}/demo"], [], 2, "--flops 0"),
    (["demo", "--out", "{d}/full"], ["full"], 2, "not empty"),
    # --- --resume
    ([*PRUNE, "--flops", "0.5", "--data", "synthetic:32", "--epochs", "1", "--resume", "--out", "{d}/none"], [], 2,
     "not found; run without --resume"),
]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None)
            for p in sorted(root.rglob("*")) if "_home" not in p.parts}


@pytest.mark.parametrize("args,files,code,fragment", ROWS, ids=[f"{i:02d}-" + " ".join(r[0][:1] + r[0][-3:])
                                                                  for i, r in enumerate(ROWS)])
def test_bad_input_row(cli, tmp_path, good_bundle, args, files, code, fragment):
    d = tmp_path / "row"
    d.mkdir()
    for name in files:
        FILES[name](d, good_bundle)
    inputs = {p: sha256(p) for p in d.rglob("*") if p.is_file()}
    before = _tree(tmp_path)
    cache_before = _tree(tmp_path / "_home")

    result = cli(*[a.format(d=d) for a in args])

    assert result.code == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (d / MARKER).exists(), "a payload carried by a file ran"
    assert {p: sha256(p) for p in inputs} == inputs, "an input file changed"
    assert _tree(tmp_path) == before, "something was left in or beside --out"
    if args[0] == "demo":
        assert _tree(tmp_path / "_home") == cache_before, "the demo trained before refusing a flag"


def test_table_has_at_least_50_rows():
    assert len(ROWS) >= 50
    assert len({tuple(r[0]) for r in ROWS}) == len(ROWS)


def test_load_bundle_refuses_code_in_recipe(tmp_path, good_bundle):
    """Python API: the same rule as the command line."""
    import prunecli
    from prunecli.core.errors import UsageError

    FILES["evil_bundle"](tmp_path, good_bundle)
    with pytest.raises(UsageError, match="load_bundle"):
        prunecli.load_bundle(tmp_path / "evil_bundle")
    assert not (tmp_path / MARKER).exists()
    # the spec the user passes is what rebuilds it
    model = prunecli.load_bundle(tmp_path / "evil_bundle", arch="torchvision:resnet18:num_classes=4")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert not (tmp_path / MARKER).exists()
