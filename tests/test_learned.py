"""Learned (DSA-style) allocation: threshold solve, expected cost, the loss moves alphas, the budget holds."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_sensitivity import SHAPE, loaded_two_branch, teacher_loaders


@pytest.mark.parametrize("alpha, beta2", [(0.99, 2.0), (0.5, 2.0), (0.3, 50.0), (0.05, 10.0)])
def test_threshold_solve_hits_the_target_mean(alpha, beta2):
    from prunecli.plan.allocators.learned import keep_probabilities

    u = torch.randn(64, generator=torch.Generator().manual_seed(0))
    a = torch.tensor(alpha, requires_grad=True)
    p = keep_probabilities(u, a, beta2)
    assert float(p.mean()) == pytest.approx(alpha, abs=1e-4)
    (grad,) = torch.autograd.grad(p.sum(), a)  # implicit differentiation: d sum(p) / d alpha = n
    assert float(grad) == pytest.approx(64, rel=1e-3)
    order = torch.argsort(u)
    assert torch.all(p[order][1:] >= p[order][:-1] - 1e-7)  # more important channels are kept more


@pytest.mark.parametrize("spec, shape", [("tinynets:tiny_resnet:width=32", "1,3,16,16"),
                                         ("torchvision:mobilenet_v2:width_mult=0.5", "1,3,64,64")])
@pytest.mark.parametrize("metric", ["flops", "params"])
def test_expected_cost_matches_the_physically_pruned_model(spec, shape, metric):
    from prunecli.artifacts.load import load_model
    from prunecli.graph.cost import count_flops, count_params
    from prunecli.graph.shrink import remove_channels_
    from prunecli.plan.allocators.learned import ExpectedCost
    from prunecli.plan.constraints import prunable_groups

    loaded = load_model(spec, input_shape=shape)
    analysis, _ = prunable_groups(loaded, round_to=1)
    cost = ExpectedCost(loaded.model, loaded.example_input, analysis.groups, metric)
    dense = count_flops(loaded.model, loaded.example_input) if metric == "flops" else count_params(loaded.model)
    assert cost.dense == pytest.approx(dense, rel=1e-6)
    g = torch.Generator().manual_seed(1)
    ratios = 0.3 + 0.6 * torch.rand(len(analysis.groups), generator=g, dtype=torch.float64)
    keep = {grp.root: max(grp.min_keep, int(round(float(r) * grp.channels))) for grp, r in zip(analysis.groups, ratios)}
    alpha = torch.tensor([keep[grp.root] / grp.channels for grp in analysis.groups], dtype=torch.float64)
    pruned = copy.deepcopy(loaded.model)
    remove_channels_(pruned, loaded.example_input, {r: list(range(k, grp.channels)) for (r, k), grp
                                                     in zip(keep.items(), analysis.groups) if k < grp.channels})
    actual = count_flops(pruned, loaded.example_input) if metric == "flops" else count_params(pruned)
    assert float(cost(alpha)) == pytest.approx(actual, rel=0.02)


def test_the_loss_raises_the_alpha_of_the_group_it_depends_on():
    from prunecli.plan.allocators.learned import ExpectedCost, search
    from prunecli.plan.allocators.learned import Learned as SearchConfig
    from prunecli.plan.constraints import prunable_groups

    loaded = loaded_two_branch()
    data = teacher_loaders(loaded.model, n=512)
    analysis, _ = prunable_groups(loaded, round_to=1)
    cost = ExpectedCost(loaded.model, loaded.example_input, analysis.groups, "flops")
    target = 0.5 * cost.dense
    before = loaded.model.a.weight.detach().clone()
    result = search(loaded.model, loaded.example_input, analysis.groups, data.train, "flops", target,
                    SearchConfig(epochs=6, seed=0))
    assert result.alpha["a"] > result.alpha["b"] + 0.2, result.alpha
    final = result.history[-1]
    assert final["expected_ratio"] <= 0.5 + 1e-6 and final["target_ratio"] == pytest.approx(0.5)
    assert result.history[0]["alpha"][0] > 0.9  # starts near 0.99 and is pulled down by the budget
    assert torch.equal(before, loaded.model.a.weight)  # the search trains a copy
    assert not result.model.a._forward_hooks  # the masks are removed afterwards


def test_prune_learned_meets_the_budget_and_writes_the_alpha_plot(cli, tmp_path):
    result = cli("prune", "tinynets:tiny_resnet:width=32", "--input-shape", "1,3,16,16", "--round-to", "1",
                 "--data", "synthetic:256", "--batch-size", "32", "--allocation", "learned", "--search-epochs", "1",
                 "--epochs", "1", "--flops", "0.5", "--no-latency", "--out", tmp_path / "p", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert 0.495 <= report["budget"]["flops"]["achieved_ratio"] <= 0.5
    assert set(report["allocation"]["alpha"]) == {g["root"] for g in report["groups"]}
    assert report["allocation"]["search_steps"] > 0
    assert report["allocation"]["estimator"] == "fd" and set(report["allocation"]["loss_slopes"]) == set(report["allocation"]["alpha"])
    assert (tmp_path / "p" / "alpha.png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((tmp_path / "p" / "alpha_history.json").read_text())
    assert len(history["steps"]) == report["allocation"]["search_steps"]

    params = cli("prune", "tinynets:tiny_resnet:width=64", "--input-shape", "1,3,16,16", "--round-to", "1",
                 "--data", "synthetic:256", "--batch-size", "32", "--allocation", "learned", "--params", "0.5",
                 "--no-latency", "--out", tmp_path / "q", "--json")
    assert params.code == 0, params
    assert 0.495 <= json.loads(params.stdout)["budget"]["params"]["achieved_ratio"] <= 0.5


def test_learned_needs_data(cli, tmp_path):
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", SHAPE, "--flops", "0.5", "--allocation", "learned",
                 "--out", tmp_path / "p")
    assert result.code == 2 and "--data" in result.stderr


def test_expected_cost_splits_a_concatenated_input_between_its_groups():
    from prunecli.plan.allocators.learned import ExpectedCost
    from prunecli.plan.constraints import prunable_groups

    loaded = loaded_two_branch()
    analysis, _ = prunable_groups(loaded, round_to=1)
    cost = ExpectedCost(loaded.model, loaded.example_input, analysis.groups, "params")
    head = [t for t in cost.terms if len(t[2]) == 2]
    assert len(head) == 1 and sorted(head[0][2].values()) == [0.5, 0.5]  # head.weight: half from a, half from b


def test_budget_shift_gives_the_uniform_allocation_and_the_reduced_gradient_is_exact():
    """Equal logits meet the target with equal ratios; reduced_gradient is the derivative of a loss along the
    budget surface (checked by finite differences through the re-solved shift), zero where g ~ c (KKT)."""
    from prunecli.plan.allocators.learned import budget_shift, reduced_gradient

    c = torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64)
    lo = torch.tensor([0.1, 0.1, 0.25], dtype=torch.float64)
    cost = lambda a: (c * a).sum() + 0.5 * a[0] * a[1]  # noqa: E731  (a bilinear term, as between groups)
    alpha_of = lambda t: lo + (1 - lo) * torch.sigmoid(t)  # noqa: E731
    target = 0.4 * float(cost(torch.ones(3, dtype=torch.float64)))
    theta = torch.zeros(3, dtype=torch.float64)
    alpha = alpha_of(theta - budget_shift(theta, alpha_of, cost, target))
    assert float(cost(alpha)) == pytest.approx(target, rel=1e-9)
    unit = (alpha - lo) / (1 - lo)
    assert torch.allclose(unit, unit[0].expand(3))  # uniform in the free range above each floor

    w = torch.tensor([-3.0, -0.5, -1.0], dtype=torch.float64)
    loss = lambda a: (w * a).sum() + (a ** 2).sum()  # noqa: E731
    theta = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)

    def along_budget(t):
        return float(loss(alpha_of(t - budget_shift(t, alpha_of, cost, target))))

    nu = budget_shift(theta, alpha_of, cost, target)
    a = alpha_of(theta - nu).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(a), a)
    a2 = a.detach().clone().requires_grad_(True)
    (cg,) = torch.autograd.grad(cost(a2), a2)
    s = torch.sigmoid(theta - nu)
    analytic = reduced_gradient(g, cg, (1 - lo) * s * (1 - s))
    numeric = torch.tensor([(along_budget(theta + e * 1e-5) - along_budget(theta - e * 1e-5)) / 2e-5
                            for e in torch.eye(3, dtype=torch.float64)], dtype=torch.float64)
    assert torch.allclose(analytic, numeric, atol=1e-5), (analytic, numeric)
    assert torch.allclose(reduced_gradient(-2.0 * cg, cg, (1 - lo) * s * (1 - s)), torch.zeros(3, dtype=torch.float64),
                          atol=1e-12)


def test_loss_slopes_see_the_group_the_loss_uses_and_leave_running_statistics_alone():
    from prunecli.graph.groups import channel_roles
    from prunecli.plan.allocators.learned import Masks, loss_slopes
    from prunecli.plan.constraints import prunable_groups

    loaded = loaded_two_branch()
    data = teacher_loaders(loaded.model, n=256)
    analysis, _ = prunable_groups(loaded, round_to=1)
    model = loaded.model.train()
    roles = channel_roles(model, loaded.example_input, analysis.groups)
    assert model.training  # tracing the graph must not leave the model in eval mode
    masks = Masks(model, analysis.groups, roles)
    masks.refresh()
    index = {g.root: k for k, g in enumerate(analysis.groups)}
    lo = torch.tensor([g.min_keep / g.channels for g in analysis.groups], dtype=torch.float64)
    alpha = torch.full((len(analysis.groups),), 0.5)
    stats = model.bn_a.running_mean.clone()
    x, y = next(iter(data.train))
    slopes, base = loss_slopes(model, masks, alpha, 5.0, x, y, masks.noise(torch.Generator().manual_seed(0)), 0.05, lo,
                               analysis.groups, range(len(analysis.groups)), torch.nn.functional.cross_entropy)
    masks.remove()
    assert slopes[index["a"]] < -0.1  # keeping more of branch a lowers the loss
    assert slopes[index["b"]] == pytest.approx(0.0, abs=1e-6)  # the head ignores branch b
    assert base > 0 and torch.equal(stats, model.bn_a.running_mean)


def test_search_estimators_are_selectable_and_validated():
    from prunecli.plan.allocators.learned import Learned as SearchConfig

    assert SearchConfig().estimator == "fd"
    with pytest.raises(ValueError, match="estimator"):
        SearchConfig(estimator="reinforce")


def test_the_budget_fit_gives_steps_back_to_the_groups_furthest_below_their_learned_count():
    from prunecli.artifacts.load import load_model
    from prunecli.graph.groups import removable_steps
    from prunecli.plan.budget import CostOracle, fit_budget
    from prunecli.plan.constraints import prunable_groups

    loaded = load_model("tinynets:tiny_resnet:width=32", input_shape="1,3,16,16")
    analysis, _ = prunable_groups(loaded, round_to=1)
    dense = {"flops": analysis.flops, "params": analysis.params}
    targets = {"flops": int(0.5 * dense["flops"])}
    oracle = CostOracle(loaded.model, loaded.example_input, analysis.groups)
    roots = [g.root for g in analysis.groups]
    steps = {g.root: removable_steps(g) for g in analysis.groups}
    order = [r for i in range(max(steps.values())) for r in roots if i < steps[r]]  # the groups' steps in turn
    for wanted_root in roots:
        prefer = {g.root: (g.channels if g.root == wanted_root else g.min_keep) for g in analysis.groups}
        fit = fit_budget(analysis.groups, order, targets, oracle, dense, prefer=prefer)
        assert fit.cost["flops"] <= targets["flops"] and fit.cost["flops"] >= 0.99 * targets["flops"]
        plain = fit_budget(analysis.groups, order, targets, oracle, dense)
        # the preferred group ends with at least as many channels as without a preference
        assert fit.counts[wanted_root] >= plain.counts[wanted_root]


@pytest.mark.parametrize("weights", ["searched", "dense"])
def test_the_learned_plan_applies_to_the_searched_weights_or_for_the_control_to_the_input(weights):
    from prunecli.pipeline.config import PruneConfig
    from prunecli.plan.allocators.learned import Learned as SearchConfig
    from prunecli.plan.stage import plan_model
    from prunecli.plan.targets import BudgetTarget

    loaded = loaded_two_branch()
    data = teacher_loaders(loaded.model)
    config = PruneConfig(flops=BudgetTarget("flops", 0.5), criterion="l1", round_to=1,
                         allocation=SearchConfig(epochs=1, weights=weights))
    result = plan_model(loaded, config, {}, data=data)
    assert 0.495 * result.dense["flops"] <= result.fit.cost["flops"] <= 0.5 * result.dense["flops"]
    if weights == "dense":
        assert result.source.model is loaded.model  # counts from the search, channels and weights from the input
    else:
        assert result.source.model is not loaded.model
        assert not torch.equal(result.source.model.a.weight, loaded.model.a.weight)  # the search trained a copy
