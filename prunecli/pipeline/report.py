"""report.json for `prune`: built from what the stages returned (the schedule's Outcome, the costs measured on the
final model, the export check, the latency measurement); no stage is asked again here."""

from __future__ import annotations

import dataclasses
import platform

from prunecli.core.errors import BudgetNotMet
from prunecli.graph.cost import FLOPS_LABEL, MACS_LABEL, PARAMS_LABEL
from prunecli.graph.groups import root_widths
from prunecli.graph.plans import Plan
from prunecli.pipeline.config import PruneConfig

SCHEMA_VERSION = 1


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("prunecli", "torch", "torchvision", "torch-pruning", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def budget_report(config: PruneConfig, dense: dict, targets: dict, achieved: dict) -> dict:
    out = {}
    for budget in config.budgets():
        m = budget.metric
        out[m] = {
            "requested": budget.value,
            "requested_as": "absolute" if budget.absolute else "fraction",
            "target": targets[m],
            "target_ratio": targets[m] / dense[m],
            "achieved": achieved[m],
            "achieved_ratio": achieved[m] / dense[m],
            "gap": (targets[m] - achieved[m]) / targets[m],
            "met": achieved[m] <= targets[m],
        }
    return out


def latency_budget_report(config: PruneConfig, measured: dict, evidence: dict) -> dict:
    """``budget.latency``: target vs the final model measured (with its 95% interval) vs the latency model's
    prediction, and how it was measured."""
    budget, settings = config.latency, config.latency_settings
    fit = evidence.get("latency") or {"binding": "resumed: the fit ran in the first run", "probes": [], "model": None}
    absolute = budget.absolute
    value = measured["pruned_ms"] if absolute else measured["ratio"]
    high = measured["pruned_ms"] * measured["ci95"][1] / measured["ratio"] if absolute else measured["ci95"][1]
    low = measured["pruned_ms"] * measured["ci95"][0] / measured["ratio"] if absolute else measured["ci95"][0]
    predicted_ms = fit.get("predicted_ms")
    predicted = None if predicted_ms is None else predicted_ms if absolute else predicted_ms / fit["dense_ms"]
    return {
        "artifact": measured["model"], "requested": budget.value,
        "requested_as": "milliseconds" if absolute else "fraction",
        "target": budget.value, "unit": "ms" if absolute else "fraction of dense",
        "target_ms": budget.value if absolute else budget.value * measured["dense_ms"],
        "measured": value, "ci95": [low, high], "measured_ms": measured["pruned_ms"], "dense_ms": measured["dense_ms"],
        "measured_ratio": measured["ratio"],
        "int8_factor": fit.get("int8_factor"),
        "predicted": predicted, "prediction_error": predicted / value - 1 if value and predicted is not None else None,
        "gap": (budget.value - value) / budget.value, "met": value <= budget.value,
        "within_window": budget.value * (1 - settings.window) <= value <= budget.value,
        "binding": fit["binding"], "stat": settings.stat,
        # the deployment statistics from the same runs (the verdict is on ``stat``), and how noisy the machine was
        # while it measured (prunecli.runtime.ratio.Ratio: spread, disagreement, noise)
        "reported": measured.get("reported", {}), "spread": measured.get("spread"),
        "disagreement": measured.get("disagreement"), "noise": measured.get("noise"),
        "processes": measured.get("processes"),  # the final check's ratio in each measuring process (median taken)
        "noisy": (measured.get("noise") or 0.0) > settings.window,
        "runs": measured["runs"], "batch": measured["batch"],
        "threads": measured["threads"], "provider": measured["provider"], "cpu": measured["cpu"],
        "margin": settings.margin, "window": settings.window, "halfwidth": settings.halfwidth,
        "fit_probes": [p.to_json() for p in fit["probes"]],
        "latency_model": fit["model"],
    }


def versus_dense(measured: dict) -> dict:
    """report.json ``int8.latency_vs_dense``: the INT8 model against the dense fp32 model (from latency_ratio)."""
    return {"ratio_p50": measured["ratio_p50"], "p50_ms": measured["pruned_p50_ms"],
            "dense_p50_ms": measured["dense_p50_ms"], "runs": measured["runs"], "batch": measured["batch"],
            "threads": measured["threads"], "note": measured["note"]}


def check_measured_budget(config: PruneConfig, budget: dict) -> None:
    """The budget reported is the budget measured: the final model's FLOPs/params (re-measured on the real model,
    not the plan's meta-device estimate) must be at most every target and, without a latency budget, the binding
    one within ``config.tolerance`` below its target; otherwise exit 1 before any bundle is written."""
    if not budget:
        return
    missed = [m for m, b in budget.items() if not b["met"]]
    closest = min(budget.values(), key=lambda b: b["gap"])
    if missed or (config.latency is None and closest["gap"] > config.tolerance + 1e-9):
        m, b = (missed[0], budget[missed[0]]) if missed else next((m, b) for m, b in budget.items() if b is closest)
        raise BudgetNotMet(f"--{m} {b['requested']:g}: the final model measures {b['achieved_ratio']:.4f} of dense "
                           f"against the target {b['target_ratio']:.4f} (tolerance {config.tolerance:g} below it); the "
                           "plan's estimate and the pruned model disagree, so no bundle was written (rerun with --debug "
                           "and report it)")


def group_rows(first_plan: Plan, dense, pruned) -> list[dict]:
    """Channels per group before (dense) and after (the final model's root layer width, in the group's channels:
    a group whose channel stands for several of its root's, as GhostNet's, counts each once)."""
    roots = [g.root for g in first_plan.groups]
    widths, dense_widths = root_widths(pruned, roots), root_widths(dense, roots)
    rows = []
    for g in first_plan.groups:
        after = widths[g.root]
        if after is not None and dense_widths[g.root]:
            after = after // max(1, dense_widths[g.root] // g.channels)
        rows.append({"root": g.root, "before": g.channels, "after": int(after) if after is not None else len(g.keep),
                     "removed": g.channels - (int(after) if after is not None else len(g.keep))})
    return rows


def build_report(loaded, config, outcome, pruned, dense_cost, pruned_cost, *, ignore, finetune, data, placement,
                 world, accuracy: dict, timings: dict) -> dict:
    """report.json's content before the bundle is written (export, INT8 and latency sections are added by
    :func:`prunecli.pipeline.prune.run_prune` as it writes them). Exit 1 if the final model misses its budget."""
    achieved = {"flops": pruned_cost.flops, "params": pruned_cost.params}
    dense = {"flops": dense_cost.flops, "params": dense_cost.params}
    targets = {b.metric: b.resolve(dense[b.metric]) for b in config.budgets()}
    allocation = config.allocation
    report = {
        "schema_version": SCHEMA_VERSION,
        "versions": versions(),
        "source": source_of(loaded),
        "input_shape": list(loaded.input_shape),
        "config": {
            "criterion": config.criterion, "allocation": config.allocation_name, "schedule": config.schedule_name,
            "round_to": outcome.round_to, "min_channels": config.min_channels,
            "max_group_prune": getattr(allocation, "max_group_prune", None),
            "ignore": list(ignore),
            "seed": config.seed, "tolerance": config.tolerance, "opset": config.opset,
            "allocation_settings": allocation.settings(),
            "schedule_settings": config.schedule.settings(),
            "sensitivity": allocation.settings() if config.allocation_name == "sensitivity" else None,  # schema v1 key
            "finetune": dataclasses.asdict(finetune) if data is not None else None,
            "device": placement.to_json(),
            "world_size": world.world_size,
            "data": data.describe() if data is not None else None,
        },
        "units": {"flops": FLOPS_LABEL, "macs": MACS_LABEL, "params": PARAMS_LABEL},
        "dense": {"flops": dense_cost.flops, "params": dense_cost.params, "macs": dense_cost.macs},
        "budget": budget_report(config, dense, targets, achieved),
        "achieved": {"flops": pruned_cost.flops, "params": pruned_cost.params, "macs": pruned_cost.macs,
                     **pruned_cost.ratio_to(dense_cost)},
        "groups": group_rows(outcome.plans[0], loaded.model, pruned),
        "timings": timings,
    }
    evidence = outcome.evidence
    if evidence.get("round_to_note"):
        report["config"]["round_to_note"] = evidence["round_to_note"]
    if config.latency is not None:
        report["config"]["latency"] = dataclasses.asdict(config.latency_settings)
    check_measured_budget(config, report["budget"])
    if evidence.get("correctness"):  # one per pruning step: the pruned model checked against the dense one
        report["correctness"] = evidence["correctness"]
    if evidence.get("criterion_fallbacks"):
        report["criterion_fallbacks"] = evidence["criterion_fallbacks"]
    if evidence.get("cost_oracle"):  # how the budget fit costed its candidates (the final model is counted below)
        report["budget_fit"] = {"candidate_costs": evidence["cost_oracle"]}
    search = evidence.get("search")
    if search is not None:
        report["allocation"] = {
            "method": "learned", "alpha": search.alpha, "search_steps": len(search.history),
            "search_epochs": search.epochs, "search_s": search.wall_s,
            "final_expected_ratio": search.history[-1]["expected_ratio"] if search.history else None,
            "estimator": search.estimator,
            "loss_slopes": dict(zip(search.roots, search.history[-1]["slope"])) if search.history else {},
            "kept_ratio": {g["root"]: g["after"] / g["before"] for g in report["groups"]},
        }
    if data is not None:
        report["accuracy"] = accuracy
        report["history"] = outcome.history
    if outcome.training:
        report["training"] = outcome.training
    if outcome.interrupted:
        report["interrupted"] = True
    if "latency" in evidence and config.latency is None:
        report["latency_model"] = evidence["latency"]["model"]
    return report


def source_of(loaded) -> dict:
    """report.json ``source``: what was pruned (the spec, its kind, path and sha256)."""
    return {"arch": loaded.arch, "kind": loaded.kind, "path": str(loaded.source) if loaded.source else None,
            "sha256": loaded.source_sha256}
