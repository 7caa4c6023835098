"""The plan stage: graph -> channel scores -> allocation -> exact budget fit -> which channels go.

:func:`plan_model` decides and returns a :class:`PlanResult`; :func:`prunecli.graph.shrink.shrink_copy` applies it
to a copy. The allocation's config type selects the allocator (:mod:`prunecli.plan.allocators`); data-driven
allocators declare what they need (``needs``) where they are registered and this module provides that evidence, so
allocators stay pure. Schedules (:mod:`prunecli.pipeline.schedules`) and the pipeline (:mod:`prunecli.pipeline.prune`)
call this stage; it imports neither.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from prunecli.artifacts.load import LoadedModel
from prunecli.core.deadline import bounded
from prunecli.core.errors import RuntimeFailure, UsageError
from prunecli.graph.plans import GroupPlan, Plan, select_keep
from prunecli.plan.allocators import ALLOCATORS
from prunecli.plan.budget import AnalyticOracle, cost_oracle, fit_budget
from prunecli.plan.config import PlanConfig
from prunecli.plan.constraints import prunable_groups
from prunecli.plan.criteria import CRITERIA, channel_scores
from prunecli.plan.latency_bench import (
    LatencyBench,
    fit_with_latency,
    plan_key,
    staircase_round_to,
)

DATA_NEEDS = ("sensitivity", "search")  # what an allocator can need that evaluates the model on --data


def _evidence(allocator, loaded: LoadedModel, config: PlanConfig, analysis, data, batches, progress, timings,
              placement=None) -> dict:
    """What a data-driven allocator declared it needs (``needs``), computed here so allocators stay pure."""
    needs = getattr(allocator, "needs", None)
    if needs is None or needs == "latency":  # the latency model is provided by plan_model's LatencyBench
        return {}
    if data is None:
        raise UsageError(f"--allocation {config.allocation_name} evaluates the model: pass --data SPEC (e.g. --data digits)")
    if needs == "sensitivity":
        from prunecli.plan.allocators.sensitivity.scan import cached_scan

        scan = cached_scan(loaded.model, loaded.example_input, analysis.groups, data.val, config.allocation,
                           criterion_batches=batches, progress=progress, placement=placement)
        timings["sensitivity"] = {"scan_s": scan.wall_s, "cached": scan.cached, "key": scan.key}
        return {"sensitivity": scan}
    if needs == "search":
        from prunecli.plan.allocators.learned.search import search

        metric = "flops" if config.flops is not None else "params"
        budget = config.flops if config.flops is not None else config.params
        target = budget.resolve(analysis.flops if metric == "flops" else analysis.params)
        search_config = config.allocation
        result = search(loaded.model, loaded.example_input, analysis.groups, data.train, metric, target, search_config,
                        progress=progress, placement=placement)
        timings["search_allocation_s"] = result.wall_s
        wanted = {g.root: result.alpha[g.root] * g.channels for g in analysis.groups}  # the fit's last gap follows these
        if search_config.weights == "dense":
            # a control (benchmarks/quality.py): the learned counts applied to the input's weights, channels chosen by
            # --criterion, so that the allocation is judged apart from the search's training
            return {"search": result, "prefer": wanted}
        return {"search": result, "scores": result.scores, "source_model": result.model, "prefer": wanted}
    raise RuntimeFailure(f"allocator {config.allocation_name!r} needs {needs!r}, which prunecli does not provide")


def check_budgets(config: PlanConfig, dense: dict) -> dict:
    """The targets as counts; a target at or above the dense model leaves nothing to prune (exit 2)."""
    targets = {}
    for budget in config.budgets():
        target = budget.resolve(dense[budget.metric])
        if target >= dense[budget.metric]:
            raise UsageError(f"--{budget.metric} {budget.describe()} is at or above the dense model "
                             f"({dense[budget.metric]:,} {budget.metric}): nothing to prune; give a fraction below 1 "
                             "or a smaller count (`prunecli export` writes the dense model as it is)")
        targets[budget.metric] = target
    return targets


def dense_flops_params(loaded: LoadedModel) -> dict:
    """FLOPs and params of the dense model (no MACs: cheap enough to run before any other work)."""
    from prunecli.graph.cost import count_flops, count_params

    return {"flops": count_flops(loaded.model, loaded.example_input), "params": count_params(loaded.model)}


@dataclass
class PlanResult:
    """What `plan_model` decided. ``source`` is the model the plan applies to: the input, or for
    allocators that train while they search (learned) the searched copy of it."""

    plan: Plan
    analysis: object
    fit: object  # budget.Fit
    dense: dict
    targets: dict
    round_to: int
    source: LoadedModel
    evidence: dict


def plan_model(loaded: LoadedModel, config: PlanConfig, timings: dict, batches=None, data=None, progress=None,
               placement=None):
    """Decide which channels go (a PlanResult). Never changes ``loaded``.

    ``data`` (Loaders) is needed by data-driven allocators (sensitivity); ``batches`` by data-driven criteria.
    """
    CRITERIA.get(config.criterion)  # unknown names fail before any work
    allocator = ALLOCATORS.for_config(config.allocation)
    t0 = time.perf_counter()
    latency_aware = config.latency is not None or getattr(allocator, "needs", None) == "latency"
    round_to, staircase_note = config.round_to, None
    if latency_aware and round_to is None:
        round_to, staircase_note = staircase_round_to(loaded, config)
    with bounded("graph", config.timeout):
        analysis, round_to = prunable_groups(loaded, ignore=config.ignore, round_to=round_to,
                                             min_channels=config.min_channels, prune_heads=config.prune_heads)
    if not analysis.groups:
        if config.ignore:
            raise UsageError(f"--ignore {' --ignore '.join(config.ignore)} leaves no prunable channel group in "
                             f"{loaded.display_name}; keep fewer layers intact (see `prunecli inspect`)")
        raise UsageError(f"MODEL {loaded.display_name} has no prunable channel groups (see `prunecli inspect`)")
    dense = {"flops": analysis.flops, "params": analysis.params}
    targets = check_budgets(config, dense)
    timings["graph_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    notes: list[str] = []
    with bounded("channel scoring", config.timeout):
        scores = channel_scores(loaded.model, loaded.example_input, [(g.root, g.channels) for g in analysis.groups],
                                config.criterion, seed=config.seed, batches=batches, notes=notes)
    timings["score_s"] = time.perf_counter() - t0
    evidence = _evidence(allocator, loaded, config, analysis, data, batches, progress, timings, placement)
    if notes:
        evidence["criterion_fallbacks"] = notes
    if staircase_note:
        evidence["round_to_note"] = staircase_note
    bench = None
    if latency_aware:
        bench = LatencyBench(loaded, config, analysis, timings, data)
        evidence["latency_model"] = bench.model
    try:
        order = allocator(analysis.groups, scores, config.allocation, config.fit_metric, evidence)
        scores = evidence.get("scores", scores)  # learned: keep the channels its search ranked highest

        t0 = time.perf_counter()
        hint = (f"with --round-to {round_to} and --min-channels {config.min_channels}"
                + (f" and --max-group-prune {config.allocation.max_group_prune}"
                   if hasattr(config.allocation, "max_group_prune") else "")
                + "; lower those (or drop --ignore patterns) to reach further")
        oracle = cost_oracle(loaded.model, loaded.example_input, analysis.groups)

        def fit_counts(oracle):
            if config.latency is not None:
                return fit_with_latency(bench, analysis, order, targets, oracle, dense, config, hint,
                                        evidence.get("prefer"), timings)
            return fit_budget(analysis.groups, order, targets, oracle, dense, tolerance=config.tolerance, hint=hint,
                              prefer=evidence.get("prefer")), None

        with bounded("budget fit", config.timeout):
            fit, latency_fit = fit_counts(oracle)
            evidence["cost_oracle"] = "meta-copy"
            if isinstance(oracle, AnalyticOracle):
                evidence["cost_oracle"] = "polynomial, checked on the plan"
                if not oracle.exact(fit.counts):  # a cost the polynomial misses: fit again, counting exactly
                    evidence["cost_oracle"] = "meta-copy (the polynomial differed on this model's plan)"
                    fit, latency_fit = fit_counts(oracle.meta)
            if config.latency is not None:
                evidence["latency"] = latency_fit
                evidence["latency"]["model"] = bench.model.to_json()
                evidence["latency"]["predicted_ms"] = bench.predict_ms(fit.counts)
                evidence["latency"]["dense_ms"] = bench.dense_ms
                evidence["latency"]["int8_factor"] = bench.int8_factor if bench.int8 is not None else None
                evidence["latency"]["exporter"] = bench.exporter
                evidence["latency"]["batch"] = bench.batch
                # the accepted plan's graph, when it was decided on the median of processes: the final check reuses it
                evidence["latency"]["signature"] = bench.signatures.get(plan_key(fit.counts))
            elif bench is not None:
                evidence["latency"] = {"model": bench.model.to_json(), "predicted_ms": bench.model.predict(fit.counts),
                                       "dense_ms": bench.dense_ms, "exporter": bench.exporter}
        timings["search_s"] = time.perf_counter() - t0
    finally:
        if bench is not None:
            bench.close()
        evidence.pop("latency_model", None)

    plan = Plan(
        groups=tuple(
            GroupPlan(g.root, g.channels, select_keep(scores[g.root], fit.counts[g.root], g.channel_groups, g.block))
            for g in analysis.groups
        ),
        criterion=config.criterion if "scores" not in evidence else f"{config.criterion} (search: bn|l1 on searched weights)",
        allocation=config.allocation_name,
    )
    source = loaded if "source_model" not in evidence else dataclasses.replace(loaded, model=evidence["source_model"])
    return PlanResult(plan, analysis, fit, dense, targets, round_to, source, evidence)


