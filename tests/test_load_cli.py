"""Every MODEL loading path through the CLI: exit codes, one-line messages, untouched input files."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from conftest import sha256
from safetensors.torch import save_file

ARCH = "torchvision:resnet18:num_classes=10"
SHAPE = ("--input-shape", "1,3,32,32")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    model = torchvision.models.resnet18(num_classes=10)
    sd = model.state_dict()
    torch.save({"arch": ARCH, "state_dict": sd, "input_shape": [1, 3, 32, 32]}, d / "described.pt")
    torch.save(sd, d / "plain.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, d / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "described.safetensors"), metadata={"prunecli.arch": ARCH})
    torch.save(model, d / "pickled.pt")
    torch.jit.save(torch.jit.trace(model.eval(), torch.randn(1, 3, 32, 32)), str(d / "scripted.pt"))
    (d / "empty.pt").write_bytes(b"")
    full = (d / "plain.pth").read_bytes()
    (d / "truncated.pt").write_bytes(full[: len(full) // 2])
    (d / "garbage.pt").write_bytes(b"this is not a checkpoint at all" * 10)
    (d / "model.onnx").write_bytes(b"\x08\x07")
    (d / "factory.py").write_text(
        "import torchvision\n\ndef build(num_classes=10):\n    return torchvision.models.resnet18(num_classes=num_classes)\n"
    )
    return d


# (args, expected exit code, text that must appear in stderr (exit != 0) or None)
CASES = [
    (["{d}/described.pt"], 0, None),
    (["{d}/plain.pth", "--arch", ARCH], 0, None),
    (["{d}/wrapped.pt", "--arch", ARCH], 0, None),
    (["{d}/plain.pth"], 2, "--arch"),
    (["{d}/plain.pth", "--arch", "torchvision:resnet34:num_classes=10"], 2, "missing keys layer1.2"),
    (["{d}/plain.pth", "--arch", "torchvision:resnet18"], 2, "fc.weight (10, 512) in file vs (1000, 512)"),
    (["{d}/weights.safetensors", "--arch", ARCH], 0, None),
    (["{d}/weights.safetensors"], 2, "--arch"),
    (["{d}/described.safetensors"], 0, None),
    (["{d}/pickled.pt"], 2, "execute code"),
    (["{d}/pickled.pt", "--trust-pickle"], 0, None),
    (["{d}/scripted.pt"], 2, "TorchScript"),
    (["{d}/model.onnx"], 2, "ONNX"),
    (["{d}/missing.pt"], 2, "not found"),
    (["{d}/empty.pt"], 2, "empty"),
    (["{d}/truncated.pt"], 2, "truncated or corrupted"),
    (["{d}/garbage.pt"], 2, "not a readable PyTorch checkpoint"),
    ([ARCH, "--weights", "{d}/plain.pth"], 0, None),
    ([ARCH, "--weights", "{d}/weights.safetensors"], 0, None),
    (["torchvision:resnet1"], 2, "did you mean torchvision:resnet18"),
    (["torchvision:resnet18:bogus=1"], 2, "bogus"),
    (["{d}/factory.py:build:num_classes=10"], 0, None),
    (["{d}/factory.py:nope"], 2, "no callable 'nope'"),
    (["{d}/nofile.py:build"], 2, "not found"),
    (["tinynets:tiny_resnet"], 0, None),
    (["{d}/described.pt", "--input-shape", "1,5,32,32"], 2, "--input-shape 1,5,32,32 is rejected"),
    (["{d}/described.pt", "--input-shape", "abc"], 2, "--input-shape"),
    (["{d}"], 2, "not a prunecli bundle"),
]


@pytest.mark.parametrize("args,code,message", CASES, ids=[" ".join(c[0]).replace("{d}/", "") for c in CASES])
def test_loading_paths(cli, files, args, code, message):
    args = [a.format(d=files) for a in args]
    file_args = [a for a in args if a.startswith(str(files)) and (files / a.split("/")[-1]).is_file()]
    before = {a: sha256(a) for a in file_args}
    shape = [] if "--input-shape" in args else list(SHAPE)
    result = cli("inspect", *args, *shape, "--json")
    assert result.code == code, result
    if code == 0:
        doc = json.loads(result.stdout)
        assert doc["params"] > 0 and doc["groups"]
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr  # one line, no traceback
        assert lines[0].startswith("error: ")
        assert message in lines[0], lines[0]
        assert "Traceback" not in result.stderr
    assert {a: sha256(a) for a in file_args} == before  # input files are never modified


def test_debug_shows_traceback(cli, files):
    result = cli("--debug", "inspect", f"{files}/truncated.pt")
    assert result.code == 2
    assert "Traceback" in result.stderr


def test_weights_only_is_explicit_everywhere():
    """Every torch.load in the package passes weights_only explicitly, True unless the user typed --trust-pickle."""
    from pathlib import Path

    import prunecli

    for path in Path(prunecli.__file__).parent.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=" in line, f"{path.name}: {line.strip()}"
                assert "weights_only=True" in line or "trust" in line, f"{path.name}: {line.strip()}"


def test_a_factory_file_leaves_no_bytecode_beside_it(tmp_path, monkeypatch):
    """Importing the user's factory file writes nothing into their folder, even where Python would write bytecode."""
    import sys

    from prunecli.models.arch import build_factory_object

    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "factory.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(2, 3)\n")
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    model = build_factory_object(f"{folder}/factory.py:build", "MODEL")
    assert isinstance(model, torch.nn.Linear)
    assert sorted(p.name for p in folder.iterdir()) == ["factory.py"]
    assert sys.dont_write_bytecode is False  # the setting is the caller's again
