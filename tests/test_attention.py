"""Attention layers are pruned correctly: heads updated, the softmax scale kept, the result checked against the
dense model where the identity holds (the embedding kept), budgets met, ONNX verified; a pruning that forgets to
update the heads is caught (exit 3)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

from prunecli.graph import attention  # noqa: E402
from prunecli.graph.cost import count_flops  # noqa: E402
from prunecli.graph.plans import first_kept, pooled_scores, select_keep  # noqa: E402

VIT = "timm:test_vit"  # 6 blocks, 2 heads of 32, embedding 64, input 3x160x160 (timm's pretrained_cfg)
EMBEDDING = "blocks.5.mlp.fc2"  # the embedding group's root (`prunecli inspect timm:test_vit`)
TINY_VIT = "tinynets:tiny_vit"  # torchvision VisionTransformer, nn.MultiheadAttention, 4 heads of 8


def _prune(cli, tmp_path, model, *flags):
    result = cli("prune", model, "--flops", "0.5", "--no-latency", "--json", "--out", tmp_path / "o", *flags)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("heads_flag", [[], ["--prune-heads"]], ids=["head-dims", "whole-heads"])
def test_timm_attention_prunes_exactly_and_matches_the_zeroed_dense_model(cli, tmp_path, heads_flag):
    report = _prune(cli, tmp_path, VIT, "--ignore", EMBEDDING, *heads_flag)
    assert report["input_shape"] == [1, 3, 160, 160]  # the size the model declares, not a preset's 224
    assert report["budget"]["flops"]["met"] and report["budget"]["flops"]["gap"] <= 0.01
    (check,) = report["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    layout = {(a["num_heads"], a["head_dim"]) for a in check["attention"]}
    if heads_flag:  # whole heads go: head_dim stays 32, some layers keep one head
        assert {hd for _, hd in layout} == {32} and (1, 32) in layout
    else:  # every head loses the same dimensions: 2 heads each, narrower
        assert {h for h, _ in layout} == {2} and max(hd for _, hd in layout) < 32
    assert report["onnx"]["relative_diff"] <= 1e-3 and report["onnx"]["max_abs_output"] > 0
    import prunecli

    rebuilt = prunecli.load_bundle(tmp_path / "o")
    pruned_layout = {(m.num_heads, m.head_dim) for m in rebuilt.modules() if hasattr(m, "qkv")}
    assert pruned_layout == layout


def test_timm_vit_with_its_embedding_pruned_meets_the_budget_and_says_which_check_ran(cli, tmp_path):
    report = _prune(cli, tmp_path, VIT)
    assert 0.49 <= report["budget"]["flops"]["achieved_ratio"] <= 0.5
    (check,) = report["correctness"]
    assert check["check"] == "output shape" and "LayerNorm" in check["reason"]
    rows = {g["root"]: g for g in report["groups"]}
    assert rows[EMBEDDING]["after"] < 64  # the embedding was pruned
    assert all(0 < rows[f"blocks.{i}.attn.qkv"]["after"] <= 64 for i in range(6))  # q/k/v triples, not rows


def test_torchvision_vit_prunes_its_embedding_in_whole_head_positions(cli, tmp_path):
    report = _prune(cli, tmp_path, TINY_VIT, "--input-shape", "1,3,32,32", "--round-to", "4", "--tolerance", "0.03")
    assert report["budget"]["flops"]["met"]
    (check,) = report["correctness"]
    assert {(a["kind"], a["num_heads"]) for a in check["attention"]} == {("mha", 4)}
    assert all(a["head_dim"] < 8 for a in check["attention"])
    assert report["onnx"]["relative_diff"] <= 1e-3 and report["onnx"]["max_abs_output"] > 0
    import prunecli

    model = prunecli.load_bundle(tmp_path / "o", arch=TINY_VIT)  # user code: passed by the user, never from the file
    assert model.hidden_dim == model.conv_proj.out_channels < 32  # torchvision reshapes to hidden_dim


def test_prune_heads_on_multihead_attention_is_refused_in_one_line(cli, tmp_path):
    result = cli("prune", TINY_VIT, "--input-shape", "1,3,32,32", "--flops", "0.5", "--prune-heads", "--no-latency",
                 "--out", tmp_path / "o")
    assert result.code == 2 and result.stderr.count("\n") == 1 and "nn.MultiheadAttention" in result.stderr
    assert not (tmp_path / "o").exists()


def test_heads_left_unupdated_are_caught_exit_3(cli, tmp_path, monkeypatch):
    """The classic bug (Torch-Pruning's own examples make it when whole heads go): the qkv weights lose a head but
    num_heads stays, head_dim is recomputed. It runs and matches its own ONNX; the dense check catches it."""

    def forgot_heads(heads, removed):
        kept = heads.width - len(set(removed))
        return heads.num_heads, kept // heads.num_heads

    monkeypatch.setattr(attention, "_new_layout", forgot_heads)
    result = cli("prune", VIT, "--flops", "0.5", "--prune-heads", "--ignore", EMBEDDING, "--no-latency",
                 "--out", tmp_path / "o")
    assert result.code == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "not the dense model without the removed channels" in result.stderr
    # every qkv group fails on its own; without them the budget is out of reach, so the failed check stands
    assert "the groups rooted at blocks.0.attn.qkv" in result.stderr
    assert "keeping those groups intact instead" in result.stderr and "not reachable" in result.stderr
    assert not (tmp_path / "o").exists()


def test_heads_that_disagree_with_the_weights_are_a_verification_failure():
    from prunecli.core.errors import VerificationFailed
    from prunecli.graph.shrink import check_against_dense

    model = timm.create_model("test_vit").eval()
    x = torch.randn(1, 3, 160, 160)
    broken = copy.deepcopy(model)
    broken.blocks[0].attn.num_heads = 4  # 4 x 32 != the 64 its weights have
    with pytest.raises(VerificationFailed, match="heads do not match"):
        check_against_dense(model, broken, x, {})


def test_attention_flops_are_counted_on_the_cpu_as_on_the_meta_device():
    """FlopCounterMode misses the CPU's fused attention kernel and nn.MultiheadAttention's fast path; prunecli's
    count includes them, so the dense model (real tensors) and the plan's estimates (meta) agree."""
    from tinynets import tiny_vit

    x = torch.randn(1, 3, 32, 32)
    for model in (tiny_vit().eval(), timm.create_model("test_vit").eval()):
        shape = (1, 3, 32, 32) if not hasattr(model, "blocks") else (1, 3, 160, 160)
        x = torch.randn(shape)
        real = count_flops(model, x)
        assert real == count_flops(copy.deepcopy(model).to("meta"), x.to("meta"))
        linear_only = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert real > linear_only  # attention matmuls and projections over every token are in


def test_whole_head_and_same_position_selection():
    scores = np.array([1, 1, 9, 9, 5, 5, 0, 0], dtype=float)  # 4 heads of 2
    assert select_keep(scores, 4, block=2) == (2, 3, 4, 5)  # the two best heads, whole
    assert select_keep(np.arange(8.0), 4, channel_groups=2) == (2, 3, 6, 7)  # same positions in both halves
    assert list(pooled_scores(scores, block=2)) == list(scores)
    assert first_kept(8, 4, block=2) == (0, 1, 2, 3) and first_kept(8, 4, channel_groups=2) == (0, 1, 4, 5)
    heads = attention.Heads("a", "timm", 4, 2, "a.qkv")
    assert attention._new_layout(heads, [2, 3]) == (3, 2)  # one whole head
    assert attention._new_layout(heads, [0, 2, 4, 6]) == (4, 1)  # one dimension from every head
    with pytest.raises(Exception, match="unequal|all or none"):
        attention._new_layout(heads, [0, 1, 2])
