"""Sensitivity scan and sensitivity allocation: curves, outputs, cache, and that a sensitive group keeps more."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from prunecli.train.data import Loaders

SHAPE = "1,3,8,8"


def teacher_loaders(model, n: int = 256, batch: int = 64) -> Loaders:
    """Random images labelled by the model itself: the dense model is 100% right, pruning shows as loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    make = lambda a, b: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, b), batch_size=batch)  # noqa: E731
    return Loaders(make(x[:192], y[:192]), make(x[192:], y[192:]), None, num_classes=4, name="teacher")


def loaded_two_branch():
    from prunecli.artifacts.load import load_model

    return load_model("tinynets:two_branch_one_sensitive", input_shape=SHAPE)


def test_scan_finds_the_sensitive_group_and_caches_it(monkeypatch):
    from prunecli.pipeline.sensitivity import scan_model
    from prunecli.plan.allocators import Sensitivity as SensitivityConfig
    from prunecli.plan.allocators.sensitivity import scan as sensitivity

    loaded = loaded_two_branch()
    data = teacher_loaders(loaded.model)
    config = SensitivityConfig(levels=(0.25, 0.5, 0.75), metric="loss", batches=2)
    scan, analysis = scan_model(loaded, data, config, round_to=1)
    assert {c.root for c in scan.curves} == {"a", "b"}
    a, b = scan.curve("a"), scan.curve("b")
    assert [p.removed for p in a.points] == [4, 8, 12]
    assert all(abs(p.degradation) < 1e-6 for p in b.points)  # the head ignores b
    assert all(p.degradation > 0.01 for p in a.points) and a.points[-1].degradation > 0.5
    assert a.points[1].flops_saved == b.points[1].flops_saved > 0
    assert scan.ranked()[0].root == "a" and scan.samples == 64
    assert not scan.cached

    monkeypatch.setattr(sensitivity, "run_scan", lambda *a, **k: pytest.fail("the cached scan was not reused"))
    again, _ = scan_model(loaded, data, config, round_to=1)
    assert again.cached and again.key == scan.key and again.curve("a").points == a.points
    # different settings or different weights: a different key
    changed = SensitivityConfig(levels=(0.25, 0.5), metric="loss", batches=2)
    assert sensitivity.scan_key(loaded.model, [], analysis.groups, changed) != \
        sensitivity.scan_key(loaded.model, [], analysis.groups, config)
    with torch.no_grad():
        loaded.model.a.weight[0, 0, 0, 0] += 1.0
    assert sensitivity.scan_key(loaded.model, [], analysis.groups, config) != \
        sensitivity.scan_key(loaded_two_branch().model, [], analysis.groups, config)


def test_zeroing_a_group_gives_the_outputs_of_removing_it():
    """The scan zeroes channels instead of removing them; for BatchNorm nets (incl. residual adds) that is exact."""
    from prunecli.artifacts.load import load_model
    from prunecli.graph.shrink import remove_channels_, zero_channels_

    torch.manual_seed(0)
    loaded = load_model("tinynets:tiny_resnet:width=16", input_shape="2,3,16,16")
    model = loaded.model.eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 16, 16)
    for root in ("stem", "conv_a"):  # the residual group and an inner group
        drop = {root: [1, 4, 5, 9]}
        zeroed, removed = __import__("copy").deepcopy(model), __import__("copy").deepcopy(model)
        zero_channels_(zeroed, x, drop)
        remove_channels_(removed, x, drop)
        torch.testing.assert_close(zeroed(x), removed(x), rtol=1e-5, atol=1e-5)


def test_sensitivity_allocation_prunes_the_sensitive_group_less():
    from prunecli.pipeline.config import PruneConfig
    from prunecli.plan.allocators import Sensitivity as SensitivityConfig
    from prunecli.plan.allocators import Uniform
    from prunecli.plan.stage import plan_model
    from prunecli.plan.targets import BudgetTarget

    loaded = loaded_two_branch()
    data = teacher_loaders(loaded.model)
    from prunecli.graph.groups import analyse
    from prunecli.plan.budget import CostOracle

    # FLOPs are linear in a + b (one channel is ~3% of the model), so aim at a count that exists: 20 channels
    oracle = CostOracle(loaded.model, loaded.example_input, analyse(loaded.model, loaded.example_input).groups)
    budget = BudgetTarget("flops", oracle({"a": 10, "b": 10})["flops"], absolute=True)
    kept = {}
    for allocation in ("uniform", "sensitivity"):
        config = PruneConfig(flops=budget, round_to=1,
                             allocation=SensitivityConfig(levels=(0.25, 0.5, 0.75), batches=2)
                             if allocation == "sensitivity" else Uniform())
        timings = {}
        r = plan_model(loaded, config, timings, data=data)
        plan, fit, targets = r.plan, r.fit, r.targets
        assert targets["flops"] * 0.99 <= fit.cost["flops"] <= targets["flops"]
        kept[allocation] = {g.root: len(g.keep) for g in plan.groups}
    assert abs(kept["uniform"]["a"] - kept["uniform"]["b"]) <= 1
    assert kept["sensitivity"]["a"] == 16 and kept["sensitivity"]["b"] == 4
    assert "sensitivity" in timings and timings["sensitivity"]["scan_s"] >= 0


def test_step_slopes_follow_the_lower_convex_hull():
    from prunecli.graph.groups import GroupInfo
    from prunecli.plan.allocators.sensitivity.allocator import step_slopes
    from prunecli.plan.allocators.sensitivity.scan import Curve, Point

    group = GroupInfo("g", 8, ("g",), 0.5, 0.5, step=2, min_keep=2)
    # saved 10 per 2 channels; degradation 0, 5, 6, 20 at 2, 4, 6 channels removed; no point for 6 -> interpolated
    points = [Point(0.25, 2, 0, 0.0, 10, 0), Point(0.5, 4, 0, 5.0, 20, 0), Point(0.6, 4, 0, 5.0, 20, 0)]
    slopes = step_slopes(Curve("g", 8, 2, 0.5, True, points), group)
    assert slopes[0] == 0.0 and slopes[1] == pytest.approx(0.5)
    assert slopes[2] == float("inf")  # beyond the measured range: last
    # a noisy dip (pruning more looks better) is not rewarded
    noisy = [Point(0.25, 2, 0, 3.0, 10, 0), Point(0.5, 4, 0, 1.0, 20, 0), Point(0.75, 6, 0, 9.0, 30, 0)]
    s = step_slopes(Curve("g", 8, 2, 0.5, True, noisy), group)
    assert s == pytest.approx([0.15, 0.15, 0.6])  # hull (0,0)-(20,3)-(30,9): the dip is flattened to 3


def test_sensitivity_cli_writes_csv_png_json_and_prune_reuses_the_scan(cli, tmp_path):
    args = ("--data", "synthetic:128", "--input-shape", SHAPE, "--round-to", "1", "--batch-size", "32")
    result = cli("sensitivity", "tinynets:two_branch_one_sensitive", *args, "--levels", "0.25,0.5,0.75",
                 "--batches", "2", "--out", tmp_path / "sens")
    assert result.code == 0, result
    assert "Sensitivity:" in result.stdout and "Scan:" in result.stdout
    rows = list(csv.DictReader((tmp_path / "sens" / "sensitivity.csv").open()))
    assert {r["group"] for r in rows} == {"a", "b"} and len(rows) == 2 * 4  # dense point + 3 levels per group
    assert set(rows[0]) >= {"group", "level", "metric", "flops_saved"}
    assert (tmp_path / "sens" / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert doc["ranking"][0]["group"] in ("a", "b") and doc["settings"]["levels"] == [0.25, 0.5, 0.75]

    again = cli("sensitivity", "tinynets:two_branch_one_sensitive", *args, "--levels", "0.25,0.5,0.75",
                "--batches", "2", "--out", tmp_path / "sens")
    assert again.code == 2 and "--force" in again.stderr  # a non-empty --out is kept

    result = cli("prune", "tinynets:two_branch_one_sensitive", *args, "--flops", "0.6", "--allocation", "sensitivity",
                 "--sensitivity-levels", "0.25,0.5,0.75", "--sensitivity-batches", "2", "--no-latency", "--tolerance", "0.04",
                 "--out", tmp_path / "p", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["timings"]["sensitivity"]["cached"] is True
    assert report["config"]["sensitivity"]["levels"] == [0.25, 0.5, 0.75]
    assert 0.6 * 0.96 <= report["budget"]["flops"]["achieved_ratio"] <= 0.6  # a channel is ~3% of this toy


@pytest.mark.parametrize("args, message", [
    (("--levels", "0.5,1.2"), "--levels"),
    (("--metric", "top5"), "--metric"),
    (("--criterion", "l3"), "--criterion"),
    (("--batches", "0"), "--batches"),
])
def test_sensitivity_bad_flags_are_one_line_exit_2(cli, tmp_path, args, message):
    result = cli("sensitivity", "tinynets:two_branch_one_sensitive", "--data", "synthetic:64", "--input-shape", SHAPE,
                 *args, "--out", tmp_path / "s")
    assert result.code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_prune_sensitivity_needs_data(cli, tmp_path):
    result = cli("prune", "tinynets:two_branch_one_sensitive", "--input-shape", SHAPE, "--flops", "0.5",
                 "--allocation", "sensitivity", "--out", tmp_path / "p")
    assert result.code == 2 and "--data" in result.stderr
