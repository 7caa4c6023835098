"""Configs whose type is the technique: the allocation's and the schedule's class select the handler, their fields
are its settings, report.json records both, and a name or a foreign object is refused naming what to pass."""

from __future__ import annotations

import json

import pytest

from prunecli.artifacts.load import load_model
from prunecli.pipeline.config import PruneConfig
from prunecli.pipeline.prune import run_prune
from prunecli.pipeline.schedules import SCHEDULES, Agp, OneShot, Soft
from prunecli.plan.allocators import (
    ALLOCATORS,
    Global,
    Latency,
    Learned,
    Sensitivity,
    Uniform,
)
from prunecli.plan.targets import BudgetTarget

HALF = BudgetTarget("flops", 0.5)


def test_the_config_class_selects_the_technique():
    assert [ALLOCATORS.name_of(c) for c in (Uniform(), Global(), Latency(), Sensitivity(), Learned())] == [
        "uniform", "global", "latency", "sensitivity", "learned"]
    assert [SCHEDULES.name_of(c) for c in (OneShot(), Agp(), Soft())] == ["oneshot", "agp", "soft"]
    assert ALLOCATORS.for_config(Global()) is ALLOCATORS.get("global")
    assert ALLOCATORS.config("sensitivity") is Sensitivity


def test_defaults_follow_the_budget():
    assert isinstance(PruneConfig(flops=HALF).allocation, Uniform)
    assert isinstance(PruneConfig(flops=HALF).schedule, OneShot)
    from prunecli.plan.targets import LatencyTarget

    assert isinstance(PruneConfig(latency=LatencyTarget(0.5)).allocation, Latency)


def test_scan_and_search_rank_and_seed_as_the_config_says():
    config = PruneConfig(flops=HALF, criterion="random", seed=3, allocation=Sensitivity(batches=2))
    assert (config.allocation.criterion, config.allocation.seed, config.allocation.batches) == ("random", 3, 2)
    assert PruneConfig(flops=HALF, seed=5, allocation=Learned(epochs=1)).allocation.seed == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"allocation": "global"}, "allocation='global' is a name: pass its config, e.g. Global()"),
    ({"schedule": "agp"}, "schedule='agp' is a name: pass its config, e.g. Agp()"),
    ({"allocation": "globl"}, "--allocation 'globl' is not a known allocation (did you mean 'global'?)"),
])
def test_a_name_is_refused_naming_the_class(kwargs, message):
    from prunecli.core.errors import UsageError

    with pytest.raises((ValueError, UsageError)) as info:
        PruneConfig(flops=HALF, **kwargs)
    assert message in str(info.value)


def test_a_foreign_object_names_the_config_classes():
    with pytest.raises(TypeError, match=r"allocation must be one of Global\(\), Latency\(\), Learned\(\), Sensitivity\(\), Uniform\(\)"):
        PruneConfig(flops=HALF, allocation=object())
    with pytest.raises(TypeError, match=r"schedule must be one of OneShot\(\), Agp\(\), Soft\(\)"):
        PruneConfig(flops=HALF, schedule=Global())


@pytest.mark.parametrize("bad, message", [
    (lambda: Global(max_group_prune=1.5), "--max-group-prune 1.5 must be in (0, 1]"),
    (lambda: Latency(max_group_prune=0), "--max-group-prune 0 must be in (0, 1]"),
    (lambda: Agp(steps=0), "--agp-steps 0 must be >= 1"),
    (lambda: Sensitivity(levels=(0.5, 0.2)), "list each level once, ascending"),
    (lambda: Learned(epochs=0), "--search-epochs 0 must be >= 1"),
])
def test_settings_validate_on_construction(bad, message):
    with pytest.raises(ValueError) as info:
        bad()
    assert message in str(info.value)


def test_report_records_type_and_settings(tmp_path):
    loaded = load_model("tinynets:tiny_resnet", input_shape="1,3,16,16")
    config = PruneConfig(flops=HALF, round_to=1, allocation=Global(max_group_prune=0.8), schedule=Agp(steps=3))
    report = run_prune(loaded, config, tmp_path / "b", measure_latency=False)
    c = report["config"]
    assert (c["allocation"], c["allocation_settings"], c["max_group_prune"]) == ("global", {"max_group_prune": 0.8}, 0.8)
    assert (c["schedule"], c["schedule_settings"]) == ("agp", {"steps": 3})
    assert len(json.loads((tmp_path / "b" / "recipe.json").read_text())["plans"]) == 3  # three AGP steps
    assert report["budget"]["flops"]["met"]


def test_the_cli_builds_the_instance_from_flags(cli, tmp_path):
    result = cli("prune", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--flops", "0.5", "--round-to", "1",
                 "--allocation", "global", "--max-group-prune", "0.7", "--no-latency", "--out", tmp_path / "o",
                 "--json")
    assert result.code == 0, result.stderr
    c = json.loads(result.stdout)["config"]
    assert (c["allocation"], c["allocation_settings"], c["schedule"], c["schedule_settings"]) == (
        "global", {"max_group_prune": 0.7}, "oneshot", None)
    bad = cli("prune", "tinynets:tiny_resnet", "--flops", "0.5", "--allocation", "global", "--max-group-prune", "2",
              "--out", tmp_path / "p")
    assert bad.code == 2 and bad.stderr == "error: --max-group-prune 2.0 must be in (0, 1]\n"
