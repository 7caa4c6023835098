"""`prunecli demo` end to end (slow: trains a ResNet-20 on digits unless cached)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_recovers_accuracy(cli, tmp_path):
    result = cli("demo", "--out", tmp_path / "demo", "--json")
    assert result.code == 0, result
    summary = json.loads(result.stdout)
    acc = summary["accuracy"]
    assert acc["dense"]["top1"] > 90
    assert acc["finetuned"]["top1"] >= acc["dense"]["top1"] - 1.0
    assert 0.495 <= summary["achieved"]["flops_ratio"] <= 0.5
    for name in ("dense.pt", "dense.onnx", "pruned/model.onnx", "pruned/recipe.json", "report.json"):
        assert (tmp_path / "demo" / name).exists()
    again = cli("inspect", tmp_path / "demo" / "dense.pt", "--json")
    assert again.code == 0 and json.loads(again.stdout)["arch"].startswith("prunecli.zoo:cifar_resnet")


def test_demo_refuses_non_empty_out(cli, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep")
    result = cli("demo", "--out", tmp_path / "d")
    assert result.code == 2 and "--out" in result.stderr
