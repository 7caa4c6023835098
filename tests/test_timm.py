"""timm:NAME specs: random init, --weights, bundles that rebuild them, and what a file may not ask for."""

from __future__ import annotations

import json
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

import prunecli  # noqa: E402
from prunecli.artifacts.load import load_model  # noqa: E402
from prunecli.core.errors import UsageError  # noqa: E402

SMALL = ["--input-shape", "1,3,64,64"]


def test_timm_spec_prunes_checks_and_rebuilds(cli, tmp_path):
    result = cli("prune", "timm:test_resnet", *SMALL, "--flops", "0.5", "--no-latency", "--json", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"]["arch"] == "timm:test_resnet" and report["source"]["kind"] == "timm"
    assert report["budget"]["flops"]["met"] and report["budget"]["flops"]["gap"] <= 0.01
    assert report["correctness"][0]["identity"] is True  # checked against the dense model, not only its ONNX
    rebuilt = prunecli.load_bundle(tmp_path / "o")  # a data spec: no --arch needed
    assert rebuilt(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_timm_spec_loads_with_and_without_weights(tmp_path):
    random_init = load_model("timm:test_resnet:num_classes=7")
    assert random_init.arch == "timm:test_resnet:num_classes=7"
    torch.manual_seed(123)
    trained = timm.create_model("test_resnet", num_classes=7)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    loaded = load_model("timm:test_resnet:num_classes=7", weights=str(tmp_path / "w.pt"))
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert not torch.equal(random_init.model.state_dict()["fc.weight"], trained.state_dict()["fc.weight"])


def test_a_file_cannot_ask_timm_to_download(cli, tmp_path):
    model = timm.create_model("test_resnet")
    torch.save({"arch": "timm:test_resnet:pretrained=True", "state_dict": model.state_dict()}, tmp_path / "m.pt")
    result = cli("inspect", tmp_path / "m.pt")
    assert result.code == 2
    assert "'pretrained' would download weights" in result.stderr and result.stderr.count("\n") == 1


def test_a_spec_cannot_point_timm_at_a_file(cli, tmp_path):
    """timm.create_model(checkpoint_path=...) unpickles that file: a data spec may never ask for it."""
    model = timm.create_model("test_resnet")
    torch.save({"arch": "timm:test_resnet:checkpoint_path=evil.pt", "state_dict": model.state_dict()}, tmp_path / "m.pt")
    for args in ([tmp_path / "m.pt"], ["timm:test_resnet:checkpoint_path=evil.pt"]):
        result = cli("inspect", *args)
        assert result.code == 2
        assert "option 'checkpoint_path' would make the library read a file" in result.stderr
        assert result.stderr.count("\n") == 1


def test_typed_pretrained_is_not_recorded_in_the_bundle_spec():
    from prunecli.models.arch import structure_spec

    assert structure_spec("timm:resnet18:pretrained=True") == "timm:resnet18"
    assert structure_spec("timm:resnet18:pretrained=True,num_classes=10") == "timm:resnet18:num_classes=10"
    assert structure_spec("torchvision:resnet18") == "torchvision:resnet18"


@pytest.mark.parametrize("spec, message", [
    ("timm:test_resnt", "timm has no model 'test_resnt' (did you mean test_resnet?)"),
    ("timm:test_resnet:depth=abc", "bad"),
])
def test_bad_timm_specs_are_one_line(cli, tmp_path, spec, message):
    result = cli("inspect", spec)
    assert result.code == 2
    assert result.stderr.count("\n") == 1
    if message != "bad":
        assert message in result.stderr, result.stderr


def test_without_timm_the_spec_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UsageError, match=r"pip install 'prunecli\[timm\]'"):
        load_model("timm:test_resnet")


def test_channels_that_stand_for_two_are_planned_once(cli, tmp_path):
    """GhostNet's pattern on a tiny net (tinynets.TinyGhost): a group whose channel stands for two of its root's is
    planned over its own channels, prunes to the budget and matches the dense model. timm's GhostNet: below, slow."""
    result = cli("prune", "tinynets:tiny_ghost", "--input-shape", "1,3,16,16", "--round-to", "1", "--flops", "0.5",
                 "--no-latency", "--json", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    (check,) = report["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    rows = {g["root"]: g for g in report["groups"]}
    assert rows["conv_dw"]["before"] == 6  # its 12 output channels are 6 pairs
    rebuilt = prunecli.load_bundle(tmp_path / "o", arch="tinynets:tiny_ghost")
    assert dict(rebuilt.named_modules())["conv_dw"].out_channels == 2 * rows["conv_dw"]["after"] < 12


@pytest.mark.slow  # fast: test_channels_that_stand_for_two_are_planned_once
def test_ghostnet_channels_that_stand_for_two_are_planned_once(cli, tmp_path):
    """GhostNet concatenates a layer with a depthwise copy of it: removing channel i removes i and its copy. Such a
    group is planned over its own channels (half the layer's), prunes to the budget and matches the dense model."""
    result = cli("prune", "timm:ghostnet_100", *SMALL, "--flops", "0.5", "--no-latency", "--json",
                 "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    (check,) = report["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    rows = {g["root"]: g for g in report["groups"]}
    assert rows["blocks.1.0.conv_dw"]["before"] == 24  # its 48 output channels are 24 pairs
    rebuilt = prunecli.load_bundle(tmp_path / "o")
    dw = dict(rebuilt.named_modules())["blocks.1.0.conv_dw"]
    assert dw.out_channels == 2 * rows["blocks.1.0.conv_dw"]["after"]
    assert rebuilt(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_weight_standardised_convs_prune_with_their_gain(cli, tmp_path):
    """NFNets (timm's ScaledStdConv2d): Torch-Pruning left the per-channel ``gain`` at the dense width, so every
    group "broke the model" and nf_resnet26 had no prunable group. The gain is now pruned with the weight's rows;
    removing an input channel changes the standardisation, so the check is the shape one, and says so."""
    spec = "tinynets:std_conv_net"
    doc = json.loads(cli("inspect", spec, "--input-shape", "1,3,16,16", "--json").stdout)
    assert {g["root"] for g in doc["groups"]} == {"conv1", "conv2"}
    result = cli("prune", spec, "--input-shape", "1,3,16,16", "--no-latency", "--flops", "0.6", "--round-to", "1",
                 "--json", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["budget"]["flops"]["met"] and report["onnx"]["relative_diff"] <= 1e-3
    (check,) = report["correctness"]
    assert check["check"] == "output shape" and "weight standardisation" in check["reason"]
    assert "conv2 (ScaledStdConv2d)" in check["reason"]
    model = prunecli.load_bundle(tmp_path / "o", arch=spec)
    assert model.conv1.out_channels < 32
    assert model.conv1.gain.shape == (model.conv1.out_channels, 1, 1, 1)
    assert model.conv2.gain.shape == (model.conv2.out_channels, 1, 1, 1)


def test_only_convs_that_standardise_their_weight_count_as_mixing_inputs():
    """The probe behind that reason: timm's same-padding conv has a forward of its own but ignores a zero input
    channel's weights (the zeroed-dense identity still holds there); a standardised conv does not."""
    from timm.layers import Conv2dSame, ScaledStdConv2d, StdConv2d

    from prunecli.graph.shrink import _weights_mix_inputs

    assert _weights_mix_inputs(ScaledStdConv2d(4, 8, 3)) and _weights_mix_inputs(StdConv2d(4, 8, 3))
    assert not _weights_mix_inputs(Conv2dSame(4, 8, 3, stride=2))
    assert not _weights_mix_inputs(torch.nn.Conv2d(4, 8, 3)) and not _weights_mix_inputs(torch.nn.Linear(4, 8))
