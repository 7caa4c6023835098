"""`prune` and `export`: exact budgets, which channels each criterion removes, allocations, bundles, atomicity."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import sha256
from tinynets import FILTER_ORDER

import prunecli
from prunecli.artifacts.load import load_model
from prunecli.graph.shrink import shrink_copy
from prunecli.pipeline.config import PruneConfig
from prunecli.pipeline.prune import run_prune
from prunecli.plan.allocators import ALLOCATORS
from prunecli.plan.stage import plan_model
from prunecli.plan.targets import BudgetTarget

SMALL = "1,3,16,16"


def plan_for(spec, criterion="l1", allocation="uniform", flops=None, params=None, seed=0, tolerance=0.3,
             max_group_prune=None, **kw):
    """Plan on a small model; the loose tolerance lets one-group toys pass (their steps are coarse)."""
    loaded = load_model(spec, input_shape=SMALL)
    config = PruneConfig(
        flops=BudgetTarget("flops", flops) if flops else None,
        params=BudgetTarget("params", params) if params else None,
        criterion=criterion, seed=seed, tolerance=tolerance, **kw,
        allocation=ALLOCATORS.config(allocation)(**({} if max_group_prune is None else {"max_group_prune": max_group_prune})),
    )
    r = plan_model(loaded, config, {})
    return loaded, r.plan, r.fit, r.dense, r.targets


def conv1_removed(plan):
    return sorted(next(g for g in plan.groups if g.root == "conv1").removed)


SMALLEST_FOUR = sorted(i for i, rank in enumerate(FILTER_ORDER) if rank < 4)


# ------------------------------------------------------------------ budgets
def test_resnet18_flops_half_at_224(cli, tmp_path):
    result = cli("prune", "torchvision:resnet18", "--flops", "0.5", "--out", tmp_path / "o", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert 0.495 <= report["achieved"]["flops_ratio"] <= 0.500
    assert report["budget"]["flops"]["target_ratio"] == 0.5 and report["budget"]["flops"]["met"]
    assert report["onnx"]["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "o" / "report.json").read_text())["achieved"] == report["achieved"]
    for name in ("model.onnx", "model.safetensors", "recipe.json", "report.json", "report.md"):
        assert (tmp_path / "o" / name).is_file()
    assert "target" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("flops,params", [(None, 0.3), (0.5, 0.3), (0.4, None), (None, 0.6)])
def test_budgets_within_one_percent(flops, params):
    loaded = load_model("torchvision:resnet18", input_shape="1,3,64,64")
    config = PruneConfig(flops=BudgetTarget("flops", flops) if flops else None,
                         params=BudgetTarget("params", params) if params else None)
    r = plan_model(loaded, config, {})
    plan, fit, targets = r.plan, r.fit, r.targets
    pruned = shrink_copy(loaded, plan)
    from prunecli.graph.cost import count_flops, count_params

    achieved = {"flops": count_flops(pruned, loaded.example_input), "params": count_params(pruned)}
    assert achieved == fit.cost  # the meta-device search measured the real model exactly
    for metric, target in targets.items():
        assert achieved[metric] <= target
    binding = min((targets[m] - achieved[m]) / targets[m] for m in targets)
    assert binding <= 0.01


def test_absolute_budget_suffix():
    loaded = load_model("tinynets:tiny_resnet:width=64", input_shape=SMALL)
    dense_params = sum(p.numel() for p in loaded.model.parameters())
    budget = BudgetTarget.parse("params", f"{dense_params * 0.5 / 1e3:.3f}K")
    assert budget.absolute
    r = plan_model(loaded, PruneConfig(params=budget, round_to=1), {})
    fit, targets = r.fit, r.targets
    assert fit.cost["params"] <= targets["params"] and fit.cost["params"] >= 0.99 * targets["params"]


def test_too_coarse_model_exits_1_with_the_closest_plan(cli, tmp_path):
    # Two groups of 16 and 32 channels: of all 512 plans, the closest below 0.4 of the params reaches 0.9775 of
    # it (enumerated), so none lands within 1%.
    result = cli("prune", "tinynets:tiny_resnet:width=16", "--input-shape", SMALL, "--params", "0.4", "--round-to", "1",
                 "--out", tmp_path / "o")
    assert result.code == 1
    assert "closest one reaches params 0.9" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,expected", [("0.5", (0.5, False)), ("2.1G", (2.1e9, True)), ("5M", (5e6, True)),
                                           ("300k", (3e5, True)), ("1.5e3K", (1.5e6, True))])
def test_budget_parsing(text, expected):
    b = BudgetTarget.parse("flops", text)
    assert (b.value, b.absolute) == expected


def test_unreachable_budget_exits_2_before_work(cli, tmp_path):
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", SMALL, "--flops", "0.00001", "--out", tmp_path / "o")
    assert result.code == 2
    assert "not reachable: the smallest is" in result.stderr and "--round-to" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,message", [
    (["--flops", "1.5x"], "--flops '1.5x' is not a budget"),
    (["--flops", "0"], "--flops"),
    ([], "give a budget"),
    (["--flops", "0.5", "--criterion", "l3"], "did you mean 'l2'"),
    (["--flops", "0.5", "--allocation", "globl"], "did you mean 'global'"),
    (["--flops", "0.5", "--criterion", "taylor"], "needs training data: pass --data"),
])
def test_bad_prune_flags(cli, tmp_path, args, message):
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", SMALL, *args, "--out", tmp_path / "o")
    assert result.code == 2, result
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ criteria: which channels go
@pytest.mark.parametrize("criterion", ["l1", "l2", "lamp"])
def test_magnitude_criteria_remove_smallest_filters(criterion):
    _, plan, *_ = plan_for("tinynets:two_conv_magnitude", criterion=criterion, params=0.6, round_to=1, ignore=("conv2",))
    removed = conv1_removed(plan)
    assert removed, "the budget must remove some conv1 channels"
    ranks = [FILTER_ORDER[i] for i in removed]
    assert sorted(ranks) == list(range(len(removed)))  # exactly the smallest-norm filters


def test_bn_criterion_removes_smallest_gamma():
    _, plan, *_ = plan_for("tinynets:two_conv_bn", criterion="bn", params=0.6, round_to=1, ignore=("conv2",))
    removed = conv1_removed(plan)
    assert removed and sorted(FILTER_ORDER[i] for i in removed) == list(range(len(removed)))


def test_fpgm_removes_redundant_filters():
    _, plan, *_ = plan_for("tinynets:two_conv_redundant", criterion="fpgm", params=0.7, round_to=1, ignore=("conv2",))
    removed = conv1_removed(plan)
    assert removed and set(removed) <= {0, 1, 2, 3}


def test_random_is_seeded():
    kwargs = dict(criterion="random", flops=0.5, round_to=1)
    a = [g.keep for g in plan_for("tinynets:tiny_resnet", seed=1, **kwargs)[1].groups]
    b = [g.keep for g in plan_for("tinynets:tiny_resnet", seed=1, **kwargs)[1].groups]
    c = [g.keep for g in plan_for("tinynets:tiny_resnet", seed=2, **kwargs)[1].groups]
    assert a == b and a != c


# ------------------------------------------------------------------ allocations
def test_global_prunes_the_weak_group_more_than_uniform():
    _, uni, fit_u, _, t_u = plan_for("tinynets:unbalanced_resnet", allocation="uniform", flops=0.6, round_to=1,
                                     tolerance=0.01)
    _, glo, fit_g, _, t_g = plan_for("tinynets:unbalanced_resnet", allocation="global", flops=0.6, round_to=1,
                                     max_group_prune=0.75, tolerance=0.01)
    keep = lambda plan: {g.root: len(g.keep) for g in plan.groups}  # noqa: E731
    assert keep(glo)["conv_a"] < keep(uni)["conv_a"]
    assert keep(glo)["conv_a"] >= 128 * 0.25  # the per-group cap holds
    ratios = {len(g.keep) / g.channels for g in uni.groups}
    assert max(ratios) - min(ratios) < 0.15  # uniform: about one ratio everywhere
    for fit, t in ((fit_u, t_u), (fit_g, t_g)):
        assert t["flops"] * 0.99 <= fit.cost["flops"] <= t["flops"]


# ------------------------------------------------------------------ shrink, bundle, rebuild
def test_bundle_rebuilds_identically_without_pickles(tmp_path, monkeypatch):
    loaded = load_model("tinynets:tiny_resnet", input_shape=SMALL)
    config = PruneConfig(flops=BudgetTarget("flops", 0.5), round_to=1)
    plan = plan_model(loaded, config, {}).plan
    in_memory = shrink_copy(loaded, plan)
    assert in_memory.conv_a.weight.shape[0] < loaded.model.conv_a.weight.shape[0]  # physically smaller
    run_prune(loaded, config, tmp_path / "b")

    def no_torch_load(*args, **kwargs):
        raise AssertionError("rebuilding a bundle must not call torch.load")

    monkeypatch.setattr(torch, "load", no_torch_load)
    rebuilt = prunecli.load_bundle(tmp_path / "b", arch="tinynets:tiny_resnet")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), in_memory(x))
    assert rebuilt(x).shape == loaded.model(x).shape


def test_bundle_is_a_model_for_inspect_export_and_prune(cli, tmp_path):
    assert cli("prune", "tinynets:tiny_resnet", "--input-shape", SMALL, "--flops", "0.7", "--round-to", "1",
               "--out", tmp_path / "a").code == 0
    doc = json.loads(cli("inspect", tmp_path / "a", "--arch", "tinynets:tiny_resnet", "--json").stdout)
    first = json.loads((tmp_path / "a" / "report.json").read_text())
    assert doc["flops"] == first["achieved"]["flops"]
    again = cli("prune", tmp_path / "a", "--arch", "tinynets:tiny_resnet", "--flops", "0.8", "--round-to", "1",
                "--out", tmp_path / "b", "--json")
    assert again.code == 0, again
    assert len(json.loads((tmp_path / "b" / "recipe.json").read_text())["plans"]) == 2
    rebuilt = prunecli.load_bundle(tmp_path / "b", arch="tinynets:tiny_resnet")
    from prunecli.graph.cost import count_flops

    assert count_flops(rebuilt, torch.randn(1, 3, 16, 16)) == json.loads(again.stdout)["achieved"]["flops"]
    exported = cli("export", tmp_path / "b", "--arch", "tinynets:tiny_resnet", "--out", tmp_path / "b.onnx", "--json")
    assert exported.code == 0 and json.loads(exported.stdout)["max_abs_diff"] <= 1e-4


def test_interrupt_leaves_no_partial_bundle(tmp_path, monkeypatch):
    import prunecli.runtime.export as stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "verify_onnx", interrupted)
    loaded = load_model("tinynets:tiny_resnet", input_shape=SMALL)
    with pytest.raises(KeyboardInterrupt):
        run_prune(loaded, PruneConfig(flops=BudgetTarget("flops", 0.5)), tmp_path / "o")
    assert list(tmp_path.iterdir()) == [tmp_path / "_home"]  # no bundle, no temporary directory


def test_non_empty_out_needs_force(cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = ["prune", "tinynets:tiny_resnet", "--input-shape", SMALL, "--flops", "0.5", "--out", out]
    refused = cli(*args)
    assert refused.code == 2 and "--force" in refused.stderr
    assert (out / "keep.txt").read_text() == "precious"
    assert cli(*args, "--force").code == 0
    assert not (out / "keep.txt").exists() and (out / "model.onnx").is_file()


def test_input_file_is_unchanged_by_every_command(cli, tmp_path):
    ckpt = tmp_path / "model.pt"
    from tinynets import tiny_resnet

    torch.save({"arch": "tinynets:tiny_resnet", "state_dict": tiny_resnet().state_dict(),
                "input_shape": [1, 3, 16, 16]}, ckpt)
    before = sha256(ckpt)
    arch = ("--arch", "tinynets:tiny_resnet")  # a code spec in a file never runs: the user names it
    assert cli("inspect", ckpt, *arch).code == 0
    assert cli("prune", ckpt, *arch, "--flops", "0.5", "--out", tmp_path / "o").code == 0
    assert cli("export", ckpt, *arch, "--out", tmp_path / "m.onnx").code == 0
    assert sha256(ckpt) == before
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["source"]["sha256"] == before


def test_failed_verification_exits_3(cli, tmp_path, monkeypatch):
    import prunecli.runtime.export as export

    monkeypatch.setattr(export, "ATOL", -1.0)  # no output can match: the check must fail loudly
    result = cli("export", "tinynets:tiny_resnet", "--input-shape", SMALL, "--out", tmp_path / "m.onnx")
    assert result.code == 3
    assert "max abs diff" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_existing_file(cli, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    result = cli("export", "tinynets:tiny_resnet", "--input-shape", SMALL, "--out", tmp_path / "m.onnx")
    assert result.code == 2 and "--force" in result.stderr


def test_bundle_from_factory_file_rebuilds_elsewhere(cli, tmp_path, monkeypatch):
    (tmp_path / "net.py").write_text("from tinynets import tiny_resnet\n\ndef build():\n    return tiny_resnet()\n")
    assert cli("prune", "net.py:build", "--input-shape", SMALL, "--flops", "0.5", "--no-latency",
               "--out", tmp_path / "b").code == 0
    recipe = json.loads((tmp_path / "b" / "recipe.json").read_text())
    assert recipe["source"]["arch"] == f"{tmp_path / 'net.py'}:build"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    arch = recipe["source"]["arch"]
    assert prunecli.load_bundle(tmp_path / "b", arch=arch)(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_groups_that_would_unbalance_a_grouped_conv_are_not_prunable(cli, tmp_path):
    """Found by benchmarks/fuzz.py: a branch feeding part of a grouped conv through a concatenation crashed the
    global allocator (reshape) or produced an invalid grouped conv."""
    doc = json.loads(cli("inspect", "tinynets:concat_into_grouped", "--input-shape", SMALL, "--json").stdout)
    reasons = {n["layer"]: n["reason"] for n in doc["not_prunable"]}
    assert "cover 12 of the 18 input channels of grouped conv grouped (9 groups)" in reasons["a"]
    assert "cover 6 of the 18 input channels" in reasons["b"]
    assert {g["root"] for g in doc["groups"]} == {"grouped", "mix"}
    result = cli("prune", "tinynets:concat_into_grouped", "--input-shape", SMALL, "--flops", "0.6", "--round-to", "1",
                 "--allocation", "global", "--tolerance", "0.3", "--no-latency", "--out", tmp_path / "o", "--json")
    assert result.code == 0, result
    assert json.loads(result.stdout)["onnx"]["max_abs_diff"] <= 1e-4


def test_two_group_counts_share_one_lcm_step():
    loaded = load_model("tinynets:two_groupings", input_shape=SMALL)
    from prunecli.plan.constraints import prunable_groups

    analysis, _ = prunable_groups(loaded, round_to=1)
    stem = analysis.group("stem")
    assert (stem.channel_groups, stem.step) == (18, 18)  # lcm(6, 9); max() gave 9 and broke the 6-group conv
    pruned = shrink_copy(loaded, plan_model(loaded, PruneConfig(params=BudgetTarget("params", 0.8), round_to=1,
                                                                tolerance=0.45), {}).plan)
    assert pruned(torch.randn(1, 3, 16, 16)).shape == (1, 4)


def test_builtin_plain_vgg_prunes_to_budget_and_rebuilds(cli, tmp_path):
    """prunecli:plain_vgg (the Fashion-MNIST benchmark's second model): a plain chain, so every conv is a group."""
    from prunecli.models.arch import build_arch

    spec = "prunecli:plain_vgg:width=2,num_classes=10,in_channels=1"
    model = build_arch(spec)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 32, 64, 64]
    result = cli("prune", spec, "--input-shape", "1,1,28,28", "--data", "synthetic:64", "--flops", "0.5",
                 "--epochs", "0", "--no-latency", "--out", tmp_path / "o", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert 0.45 <= report["achieved"]["flops_ratio"] <= 0.5
    rebuilt = prunecli.load_bundle(tmp_path / "o", arch=spec)
    widths = [m.out_channels for m in rebuilt.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w < d for w, d in zip(widths, [4, 4, 8, 8, 16, 32, 64, 64]) if d >= 16)  # the wide late layers shrink
    assert rebuilt(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------- correctness against the dense model
@pytest.mark.parametrize("model, flops, kind", [
    ("tinynets:tiny_resnet", "0.5", "zeroed dense model"),  # BatchNorm/ReLU: removing = zeroing, checked
    ("tinynets:tiny_groupnorm", "0.65", "output shape"),  # GroupNorm mixes channels: the report says so
])
def test_every_prune_is_checked_against_the_dense_model(cli, tmp_path, model, flops, kind):
    result = cli("prune", model, "--input-shape", "1,3,16,16", "--flops", flops, "--no-latency", "--json",
                 "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    (check,) = json.loads(result.stdout)["correctness"]
    assert check["check"] == kind and check["identity"] is (kind == "zeroed dense model")
    if check["identity"]:
        assert check["max_abs_diff"] <= check["tolerance"] < 1e-3
    else:
        assert "norm (GroupNorm) mixes channels" in check["reason"]


def test_a_mis_pruned_model_is_exit_3_and_no_bundle(cli, tmp_path, monkeypatch):
    """A pruning bug (here: every group loses the channel after the planned one, as a layer whose indices are
    not remapped would) still runs and still matches its own ONNX; the check against the dense model catches it."""
    import prunecli.graph.shrink as planner

    real = planner.remove_channels_

    def off_by_one(model, example_input, remove, graph=None):
        shifted = {root: [(i + 1) % 64 if (i + 1) % 64 not in idxs else i for i in idxs] for root, idxs in remove.items()}
        return real(model, example_input, shifted, graph=graph)

    monkeypatch.setattr(planner, "remove_channels_", off_by_one)
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--flops", "0.5", "--no-latency",
                 "--out", tmp_path / "o")
    assert result.code == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "not the dense model without the removed channels" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_budget_is_re_measured_on_the_final_model(cli, tmp_path, monkeypatch):
    """If the pruned model measures other than the plan said (e.g. a layer left unpruned), exit 1, no bundle."""
    import prunecli.pipeline.prune as prune_module

    real = prune_module.measure
    calls = []

    def inflated(model, example_input):
        cost = real(model, example_input)
        calls.append(cost)
        if len(calls) == 2:  # the pruned model (the dense one is measured first)
            import dataclasses

            return dataclasses.replace(cost, flops=int(cost.flops * 0.66))  # far below the target: not "within 1%"
        return cost

    monkeypatch.setattr(prune_module, "measure", inflated)
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--flops", "0.5", "--no-latency",
                 "--out", tmp_path / "o")
    assert result.code == 1, result.stderr
    assert "--flops 0.5: the final model measures 0.32" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_stage_past_its_time_bound_is_refused_naming_the_stage(cli, tmp_path, monkeypatch):
    """--timeout bounds each model stage: one that would run on (here: a graph stage that sleeps) is stopped, the
    run refused with one line naming the stage and the flag, exit 4, nothing written. `inspect` has the same bound."""
    import time

    import prunecli.plan.stage as planner

    real = planner.prunable_groups
    finished = []

    def slow(*args, **kwargs):
        try:
            time.sleep(30)
        except Exception:  # a stage's own broad except (tracing has several) must not swallow the bound
            pass
        finished.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(planner, "prunable_groups", slow)
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--flops", "0.5", "--no-latency",
                 "--timeout", "1", "--out", tmp_path / "o")
    assert result.code == 4, result.stderr
    assert result.stderr.count("\n") == 1 and "graph stage ran past --timeout 1 s" in result.stderr
    assert not finished  # stopped, not waited out
    assert not (tmp_path / "o").exists()
    import signal

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left behind
    inspected = cli("inspect", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--timeout", "0.000001")
    assert inspected.code == 4 and "graph stage ran past --timeout" in inspected.stderr


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_timeout_is_one_line(cli, tmp_path, value):
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--flops", "0.5", "--timeout", value,
                 "--out", tmp_path / "o")
    assert result.code == 2 and result.stderr.count("\n") == 1 and "--timeout" in result.stderr
