"""Where Torch-Pruning (or torch's FLOP counter) fails on part of a model, only that part is lost: the failing group
is kept intact with the reason, the rest is pruned and checked against the dense model."""

from __future__ import annotations

import json


def test_a_torch_pruning_failure_costs_its_group_only(cli, tmp_path):
    """NesT/Twins/GC ViT: a 5-D expand that Torch-Pruning maps as GQA divides by zero. Before, the whole model was
    one unwrapped ``ZeroDivisionError`` line; now the group through the expand is kept, with the reason."""
    result = cli("inspect", "tinynets:expand5", "--input-shape", "1,3,16,16", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    reasons = {n["layer"]: n["reason"] for n in doc["not_prunable"]}
    assert "ZeroDivisionError in Torch-Pruning's _GQAIndexMapping.__call__" in reasons["a2"]
    assert {"b1", "b2"} <= {g["root"] for g in doc["groups"]}
    assert not any({"a1", "a2"} & set(g["layers"]) for g in doc["groups"])

    out = tmp_path / "o"
    pruned = cli("prune", "tinynets:expand5", "--input-shape", "1,3,16,16", "--no-latency", "--flops", "0.7",
                 "--round-to", "1", "--json", "--out", out)
    assert pruned.code == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    (check,) = report["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    import prunecli

    model = prunecli.load_bundle(out, arch="tinynets:expand5")
    assert (model.a1.out_channels, model.a2.out_channels) == (8, 8)  # the group through the expand: intact
    assert model.b1.out_channels < 16


def test_flops_are_counted_when_a_parameter_is_passed_as_a_block_input():
    """PiT and CaiT pass an expanded class-token parameter into a block: FlopCounterMode's module tracker raised
    ``AssertionError: Expected gradient function to be set`` under no_grad, so the model could not be measured."""
    import torch
    from tinynets import token_tuple

    from prunecli.cost import count_flops

    model = token_tuple()
    flops = count_flops(model, torch.randn(2, 5, 8))
    # embed 2*5*8*16, fc1 2*5*16*32, fc2 2*5*32*16, head 2*16*4; 2 FLOPs per multiply-add
    assert flops == 2 * (2 * 5 * 8 * 16 + 2 * 5 * 16 * 32 + 2 * 5 * 32 * 16 + 2 * 16 * 4)
    assert all(p.requires_grad for p in model.parameters())  # restored after counting
