"""Channel shuffle (view -> transpose -> view): Torch-Pruning gets the index mapping from prunecli, the groups on
either side of a shuffle lose the same positions, and the result is checked against the dense model."""

from __future__ import annotations

import json

import pytest

BLOCK = "tinynets:shuffle_block"  # two branches -> concat -> channel shuffle (2 groups) -> conv
SMALL = ["--input-shape", "1,3,16,16", "--no-latency"]


def test_a_shuffle_ties_the_branches_into_one_group(cli):
    result = cli("inspect", BLOCK, "--input-shape", "1,3,16,16", "--json")
    assert result.code == 0, result.stderr
    groups = json.loads(result.stdout)["groups"]
    tied = [g for g in groups if g["root"] in ("branch_a.0", "branch_b.0")]
    assert len(tied) == 1  # one group: both branches' convs and BatchNorms, and the conv reading the shuffle
    assert {"branch_a.0", "branch_a.1", "branch_b.0", "branch_b.1", "mix"} <= set(tied[0]["layers"])


def test_a_shuffle_block_prunes_and_matches_the_zeroed_dense_model(cli, tmp_path):
    result = cli("prune", BLOCK, *SMALL, "--flops", "0.5", "--round-to", "1", "--json", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    (check,) = report["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    assert report["budget"]["flops"]["met"] and report["onnx"]["relative_diff"] <= 1e-3
    import prunecli

    model = prunecli.load_bundle(tmp_path / "o", arch=BLOCK)
    assert model.branch_a[0].out_channels == model.branch_b[0].out_channels < 16
    assert model.mix.in_channels == 2 * model.branch_a[0].out_channels


def test_a_shuffle_read_as_identity_is_caught_and_its_group_kept(cli, tmp_path, monkeypatch):
    """Map the shuffle as if it kept channel order (what a reshape-blind tool does): the branches are pruned apart
    and the conv after the shuffle loses the wrong input columns. It runs, and it matches its own ONNX; the check
    against the dense model says it is wrong, finds the group that fails on its own, and the plan is made again
    with that group intact - the bundle written is correct and says what was kept."""
    from prunecli.graph import tracing

    monkeypatch.setattr(tracing._ShuffleIndexMapping, "__call__", lambda self, idxs: list(idxs))
    out = tmp_path / "o"
    result = cli("prune", BLOCK, *SMALL, "--flops", "0.5", "--round-to", "2", "--json", "--out", out)
    assert result.code == 0, result.stderr
    (check,) = json.loads(result.stdout)["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    assert set(check["kept_intact"]["layers"]) == {"branch_a.0", "branch_b.0"}  # read apart, each fails alone
    import prunecli

    model = prunecli.load_bundle(out, arch=BLOCK)
    assert model.branch_a[0].out_channels == model.branch_b[0].out_channels == 16  # the shuffled group: intact
    assert model.mix.out_channels < 32


@pytest.mark.slow  # fast: test_a_shuffle_block_prunes_and_matches_the_zeroed_dense_model, test_inspect[shufflenet_v2_x1_0]
@pytest.mark.parametrize("model", ["torchvision:shufflenet_v2_x0_5"])
def test_shufflenet_v2_prunes_its_branches_and_keeps_the_split_stream(cli, tmp_path, model):
    inspected = json.loads(cli("inspect", model, "--json").stdout)
    kept = [n for n in inspected["not_prunable"] if "split into chunks" in n["reason"]]
    assert kept and all(".branch" in n["layer"] for n in kept)  # the stage streams, with the reason
    result = cli("prune", model, "--flops", "0.5", "--no-latency", "--json", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    (check,) = report["correctness"]
    assert check["check"] == "zeroed dense model" and check["max_abs_diff"] <= check["tolerance"]
    assert 0.49 <= report["budget"]["flops"]["achieved_ratio"] <= 0.5


def test_a_runaway_index_mapping_costs_its_group_only(cli, monkeypatch):
    """A group whose Torch-Pruning closure would grow past the cap (a reshape it misreads: Swin's windows) is kept
    intact with the reason, and the model's other groups stay prunable (a whole-model refusal before)."""
    from prunecli.graph import tracing

    plain = json.loads(cli("inspect", "tinynets:flat_head", "--input-shape", "1,3,8,8", "--json").stdout)
    assert {g["root"] for g in plain["groups"]} == {"conv1", "conv2"}  # conv2's group crosses the flatten (x64)
    monkeypatch.setattr(tracing, "MAX_MAPPED", 100)  # 8 channels x 64 positions = 512 indices: a runaway
    capped = cli("inspect", "tinynets:flat_head", "--input-shape", "1,3,8,8", "--json")
    assert capped.code == 0, capped.stderr
    doc = json.loads(capped.stdout)
    assert [g["root"] for g in doc["groups"]] == ["conv1"]
    (kept,) = [n for n in doc["not_prunable"] if n["layer"] == "conv2"]
    assert "Torch-Pruning cannot group its channels" in kept["reason"]
