"""Where Torch-Pruning (or torch's FLOP counter) fails on part of a model, only that part is lost: the failing group
is kept intact with the reason, the rest is pruned and checked against the dense model."""

from __future__ import annotations

import json


def test_a_torch_pruning_failure_costs_its_group_only(cli, tmp_path, monkeypatch):
    """Torch-Pruning reads every 5-D expand as Hugging Face GQA and divides by zero on any other (NesT, Twins, GC
    ViT: a batched matmul's broadcast). With its reading restored, the failure is kept to the group through the
    expand, with the reason; before, the whole model was one unwrapped ``ZeroDivisionError`` line."""
    from prunecli.graph import tracing

    monkeypatch.setattr(tracing, "_repeats_heads", lambda graph, node, sizes: True)
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
    (check,) = json.loads(pruned.stdout)["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    import prunecli

    model = prunecli.load_bundle(out, arch="tinynets:expand5")
    assert (model.a1.out_channels, model.a2.out_channels) == (8, 8)  # the group through the expand: intact
    assert model.b1.out_channels < 16


def test_a_5d_expand_that_is_not_a_gqa_repeat_passes_channels_through(cli, tmp_path):
    """prunecli maps only a real GQA repeat as one; the broadcast passes channels unchanged, so the group through
    it is prunable and the result is exactly the zeroed dense model."""
    doc = json.loads(cli("inspect", "tinynets:expand5", "--input-shape", "1,3,16,16", "--json").stdout)
    (through,) = [g for g in doc["groups"] if g["root"] == "a2"]
    assert {"a1", "a2"} <= set(through["layers"])
    out = tmp_path / "o"
    pruned = cli("prune", "tinynets:expand5", "--input-shape", "1,3,16,16", "--no-latency", "--flops", "0.7",
                 "--round-to", "1", "--json", "--out", out)
    assert pruned.code == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    (check,) = report["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    assert "kept_intact" not in check
    import prunecli

    model = prunecli.load_bundle(out, arch="tinynets:expand5")
    assert model.a1.out_channels == model.a2.out_channels < 8


def test_flops_are_counted_when_a_parameter_is_passed_as_a_block_input():
    """PiT and CaiT pass an expanded class-token parameter into a block: FlopCounterMode's module tracker raised
    ``AssertionError: Expected gradient function to be set`` under no_grad, so the model could not be measured."""
    import torch
    from tinynets import token_tuple

    from prunecli.graph.cost import count_flops

    model = token_tuple()
    flops = count_flops(model, torch.randn(2, 5, 8))
    # embed 2*5*8*16, fc1 2*5*16*32, fc2 2*5*32*16, head 2*16*4; 2 FLOPs per multiply-add
    assert flops == 2 * (2 * 5 * 8 * 16 + 2 * 5 * 16 * 32 + 2 * 5 * 32 * 16 + 2 * 16 * 4)
    assert all(p.requires_grad for p in model.parameters())  # restored after counting


def test_a_split_maps_by_its_sizes_after_an_earlier_group_shrank_it():
    """Torch-Pruning's SplitPruner updates a split's sizes when a group prunes through it but stores the new offsets
    on itself, so the next group crossing the split was mapped with the dense offsets (MixNet: the wrong piece's
    channels were cut). After removing input channels 0 and 1 (both in the first piece), channel 8 is the third
    channel of the second piece."""
    import torch
    from torch import nn

    from prunecli.graph.shrink import build_graph, remove_channels_

    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            p, q = torch.split(self.conv(x), [8, 8], 1)
            return torch.cat([self.a(p), self.b(q)], 1)

    model, x = Split(), torch.randn(1, 3, 8, 8)
    graph = build_graph(model, x)
    remove_channels_(model, x, {"conv": [0, 1]}, graph=graph)
    assert (model.a.in_channels, model.b.in_channels) == (6, 8)
    pruner = graph.get_pruner_of_module(model.conv)
    group = graph.get_pruning_group(model.conv, pruner.prune_out_channels, [8])
    into_b = [sorted(idxs) for dep, idxs in group if dep.target.module is model.b]
    assert into_b == [[2]]
