"""`prunecli inspect`: exact totals, groups, the reachable range, and the architecture list."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch.utils.flop_counter import FlopCounterMode


def test_resnet18_totals_match_reference_counters(cli):
    result = cli("inspect", "torchvision:resnet18", "--json")
    assert result.code == 0, result
    doc = json.loads(result.stdout)
    assert doc["input_shape"] == [1, 3, 224, 224] and doc["preset"] == "resnet"
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    assert doc["flops"] == fc.get_total_flops()
    macs, params = tp.utils.count_ops_and_params(model, x)
    assert abs(doc["macs"] - macs) / macs < 0.01
    assert doc["params"] == params == 11_689_512
    assert len(doc["groups"]) == 12
    stem = next(g for g in doc["groups"] if g["root"] == "conv1")
    assert stem["channels"] == 64 and "layer1.0.conv2" in stem["layers"] and "bn1" in stem["layers"]
    assert {"channels", "layers", "flops_share"} <= set(stem)
    assert [n["layer"] for n in doc["not_prunable"]] == ["fc"]
    assert "classifier head" in doc["not_prunable"][0]["reason"]
    assert 0 < doc["min_flops_ratio"] < 0.05 and 0 < doc["min_params_ratio"] < 0.05
    assert "FlopCounterMode" in doc["units"]["flops"] and "MAC" in doc["units"]["macs"]


def test_round_to_and_min_channels_shrink_the_range(cli):
    fine = json.loads(cli("inspect", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--round-to", "1", "--json").stdout)
    coarse = json.loads(
        cli("inspect", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--round-to", "8", "--min-channels", "8", "--json").stdout
    )
    assert coarse["min_flops_ratio"] > fine["min_flops_ratio"]
    assert all(g["min_keep"] == 8 for g in coarse["groups"])
    assert all(g["min_keep"] == 1 for g in fine["groups"])


def test_ignore_keeps_layers_intact(cli):
    doc = json.loads(cli("inspect", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--ignore", "conv_a", "--json").stdout)
    assert "conv_a" not in [g["root"] for g in doc["groups"]]
    assert any(n["layer"] == "conv_a" and "--ignore" in n["reason"] for n in doc["not_prunable"])


def test_human_output_is_a_table(cli):
    result = cli("inspect", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16")
    assert result.code == 0
    assert "Prunable channel groups" in result.stdout and "Reachable range" in result.stdout


# The fast suite inspects one of each kind (residual, inverted residual with squeeze-excitation, channel shuffle);
# the rest of the list runs in the slow suite (`make test-slow`).
MODELS = ["resnet18", "efficientnet_b0", "shufflenet_v2_x1_0"] + [
    pytest.param(name, marks=pytest.mark.slow) for name in (
        "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vgg16_bn", "regnet_x_400mf", "densenet121", "convnext_tiny",
        "squeezenet1_0", "googlenet")]
# Architectures Torch-Pruning cannot trace today; inspect must say why in one line.
CANNOT: dict[str, str] = {}


@pytest.mark.parametrize("name", MODELS)
def test_inspect_architecture_list(cli, name):
    result = cli("inspect", f"torchvision:{name}:num_classes=10", "--input-shape", "1,3,64,64", "--json")
    if name in CANNOT:
        assert result.code == 4
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and CANNOT[name] in lines[0]
        return
    assert result.code == 0, result
    doc = json.loads(result.stdout)
    assert doc["groups"], name
    assert 0 < doc["min_flops_ratio"] < 0.5
    assert sum(g["channels"] for g in doc["groups"]) > 0
    assert any("classifier head" in n["reason"] for n in doc["not_prunable"])


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom prunecli.cli import main\nsys.argv=['prunecli','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch','onnxruntime','torch_pruning','onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "prunecli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "inspect" in out.stdout


def test_presets_listed(cli):
    result = cli("presets", "--json")
    names = {p["name"] for p in json.loads(result.stdout)}
    assert {"resnet", "mobilenet_v2", "mobilenet_v3", "vgg", "efficientnet", "regnet", "convnext", "densenet",
            "shufflenet", "squeezenet", "googlenet"} <= names
    assert cli("inspect", "tinynets:tiny_resnet", "--preset", "resnt").stderr.count("did you mean 'resnet'") == 1


@pytest.mark.slow  # fast: test_shuffle.py::test_a_shuffle_read_as_identity_is_caught_and_its_group_kept
def test_swin_keeps_what_torch_pruning_misreads_and_prunes_its_mlps(cli):
    """Torch-Pruning misreads Swin's window reshapes (a group crossing them would collect indices without bound):
    those groups are kept intact with the reason, and the MLPs - which cross no reshape - are prunable."""
    result = cli("inspect", "torchvision:swin_t:num_classes=10", "--input-shape", "1,3,64,64", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["groups"] and all(".mlp." in g["root"] for g in doc["groups"])
    assert any("Torch-Pruning cannot group its channels" in n["reason"] for n in doc["not_prunable"])
