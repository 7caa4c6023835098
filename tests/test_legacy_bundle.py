"""A bundle written before the code was re-laid out (by prunecli at commit 140301e: `prunecli prune
prunecli:cifar_resnet:depth=8,width=16 --input-shape 1,3,16,16 --flops 0.6 --no-latency`) still loads, computes
what it computed then, and is a MODEL for every command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import prunecli

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLE = FIXTURES / "bundle_140301e"


def test_a_bundle_from_before_the_restructure_loads_and_computes_the_same():
    model = prunecli.load_bundle(BUNDLE)
    x = torch.from_numpy(np.load(FIXTURES / "bundle_140301e_input.npy", allow_pickle=False))
    expected = np.load(FIXTURES / "bundle_140301e_output.npy", allow_pickle=False)
    with torch.no_grad():
        out = model(x).numpy()
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == json.loads((BUNDLE / "report.json").read_text())["achieved"]["params"]


def test_a_bundle_from_before_the_restructure_is_a_model_for_prune(cli, tmp_path):
    before = {p.name: p.read_bytes() for p in BUNDLE.iterdir()}
    result = cli("prune", BUNDLE, "--flops", "0.5", "--no-latency", "--out", tmp_path / "again", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["budget"]["flops"]["met"] and report["source"]["kind"] == "bundle"
    assert {p.name: p.read_bytes() for p in BUNDLE.iterdir()} == before  # the input is never modified
