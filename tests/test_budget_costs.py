"""The budget fit's candidate costs: the cost polynomials against pruning a meta-device copy, exactly."""

from __future__ import annotations

import json
import random

import pytest

from prunecli.artifacts.load import load_model
from prunecli.graph.cost import count_flops, count_params
from prunecli.graph.shrink import shrink_copy
from prunecli.pipeline.config import PruneConfig
from prunecli.plan import budget
from prunecli.plan.budget import AnalyticOracle, CostOracle
from prunecli.plan.stage import plan_model
from prunecli.plan.targets import BudgetTarget

ARCHS = [
    ("torchvision:resnet18", "1,3,32,32"),
    ("torchvision:mobilenet_v2:width_mult=0.5", "1,3,32,32"),
    ("torchvision:efficientnet_b0", "1,3,32,32"),
    ("torchvision:squeezenet1_1", "1,3,64,64"),  # concatenations (fire modules)
    ("torchvision:regnet_y_400mf", "1,3,32,32"),
    ("tinynets:tiny_ghost", "1,3,32,32"),  # channels that stand for two (GhostNet's cheap operation)
]


@pytest.mark.parametrize("spec,shape", ARCHS, ids=[a[0].split(":")[1] for a in ARCHS])
def test_polynomial_costs_equal_the_meta_copy_on_the_plan_and_on_random_plans(spec, shape):
    loaded = load_model(spec, input_shape=shape)
    r = plan_model(loaded, PruneConfig(flops=BudgetTarget("flops", 0.5), params=BudgetTarget("params", 0.6)), {})
    assert r.evidence["cost_oracle"] == "polynomial, checked on the plan"
    groups = r.analysis.groups
    analytic, meta = AnalyticOracle(loaded.model, loaded.example_input, groups), CostOracle(loaded.model,
                                                                                           loaded.example_input, groups)
    rng = random.Random(0)
    plans = [r.fit.counts] + [
        {g.root: g.channels - g.step * rng.randint(0, (g.channels - g.min_keep) // g.step) for g in groups}
        for _ in range(3)
    ]
    for counts in plans:
        assert analytic(counts) == meta(counts)  # FLOPs and params, exactly
    # and the fitted plan's cost is the real pruned model's
    pruned = shrink_copy(loaded, r.plan)
    assert r.fit.cost == {"flops": count_flops(pruned, loaded.example_input), "params": count_params(pruned)}


def test_a_cost_the_polynomial_misses_is_fitted_on_the_meta_copy(cli, tmp_path):
    """A per-channel parameter of the model itself (ConvNeXt's layer scale) is not a layer's: the polynomial's
    plan is found off by it, so the fit runs again on the meta copy and the budget still lands exactly."""
    r = cli("prune", "tinynets:tiny_layer_scale", "--input-shape", "1,3,16,16", "--params", "0.5", "--no-latency",
            "--out", tmp_path / "o", "--json")
    assert r.code == 0, r
    report = json.loads(r.stdout)
    assert report["budget_fit"]["candidate_costs"].startswith("meta-copy (the polynomial differed")
    params = report["budget"]["params"]
    assert params["met"] and params["achieved"] <= params["target"] and params["gap"] <= 0.01


def test_a_model_the_polynomial_cannot_follow_is_costed_on_the_meta_copy(monkeypatch):
    def refuse(*_args, **_kw):
        raise RuntimeError("channel roles cannot be traced")

    monkeypatch.setattr(budget.AnalyticOracle, "__init__", refuse)
    loaded = load_model("tinynets:tiny_resnet:width=16", input_shape="1,3,16,16")
    r = plan_model(loaded, PruneConfig(flops=BudgetTarget("flops", 0.5)), {})
    assert r.evidence["cost_oracle"] == "meta-copy"
    assert r.fit.cost["flops"] <= r.targets["flops"]
