"""The `prune` pipeline: graph -> scores -> allocate -> fit budget -> shrink -> export -> bundle.

Each step is a stage module; this one only sequences them and assembles the report.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path

from . import allocate
from .budget import CostOracle, fit_budget
from .bundle import WEIGHTS, atomic_dir, check_out_dir, make_recipe, write_weights
from .config import PruneConfig
from .cost import FLOPS_LABEL, MACS_LABEL, PARAMS_LABEL, count_macs, measure
from .criteria import CRITERIA, channel_scores
from .errors import RuntimeFailure, UsageError
from .export import export_onnx, verify_onnx
from .graph import analyse
from .inspect import constraints_for
from .load import LoadedModel
from .plan import GroupPlan, Plan, select_keep
from .shrink import remove_channels_

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


def plan_model(loaded: LoadedModel, config: PruneConfig, timings: dict):
    """Decide which channels go: (plan, analysis, fit, dense cost, targets). Touches no weights."""
    CRITERIA.get(config.criterion)  # unknown names fail before any work
    allocator = allocate.ALLOCATORS.get(config.allocation)
    patterns, round_to = constraints_for(loaded, config.ignore, config.round_to)
    t0 = time.perf_counter()
    analysis = analyse(loaded.model, loaded.example_input, ignore=patterns, round_to=round_to,
                       min_channels=config.min_channels, measure_range=False)
    if not analysis.groups:
        raise UsageError(f"MODEL {loaded.display_name} has no prunable channel groups (see `prunecli inspect`)")
    dense = {"flops": analysis.flops, "params": analysis.params}
    targets = {b.metric: b.resolve(dense[b.metric]) for b in config.budgets()}
    timings["graph_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = channel_scores(loaded.model, loaded.example_input, [(g.root, g.channels) for g in analysis.groups],
                            config.criterion, seed=config.seed)
    order = allocator(analysis.groups, scores, config)
    timings["score_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    hint = (f"with --round-to {round_to} and --min-channels {config.min_channels}"
            + (f" and --max-group-prune {config.max_group_prune}" if config.allocation == "global" else "")
            + "; lower those (or drop --ignore patterns) to reach further")
    oracle = CostOracle(loaded.model, loaded.example_input, analysis.groups)
    fit = fit_budget(analysis.groups, order, targets, oracle, dense, tolerance=config.tolerance, hint=hint)
    timings["search_s"] = time.perf_counter() - t0

    plan = Plan(
        groups=tuple(
            GroupPlan(g.root, g.channels, select_keep(scores[g.root], fit.counts[g.root], g.channel_groups))
            for g in analysis.groups
        ),
        criterion=config.criterion,
        allocation=config.allocation,
    )
    return plan, analysis, fit, dense, targets, round_to


def shrink_copy(loaded: LoadedModel, plan: Plan):
    """A physically pruned copy; the loaded model is left as it was."""
    import torch

    pruned = copy.deepcopy(loaded.model)
    remove_channels_(pruned, loaded.example_input, plan.removed())
    pruned.eval()
    with torch.no_grad():
        before = loaded.model(loaded.example_input)
        after = pruned(loaded.example_input)
    if tuple(before.shape) != tuple(after.shape):
        raise RuntimeFailure(f"pruning changed the output shape {tuple(before.shape)} -> {tuple(after.shape)}")
    return pruned


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


def latency_ratio(dense_model, pruned_onnx: Path, example_input, input_shape, opset: int, runs: int = 20) -> dict:
    """A short interleaved onnxruntime measurement of dense vs pruned (CPU, batch of the input shape)."""
    import tempfile

    from .bench import BenchConfig, run_bench

    with tempfile.TemporaryDirectory(prefix="prunecli-dense-") as tmp:
        dense_onnx = Path(tmp) / "dense.onnx"
        export_onnx(dense_model, example_input, dense_onnx, opset)
        doc = run_bench(pruned_onnx, dense_onnx, BenchConfig(warmup=3, runs=runs, block=5), tuple(input_shape))
    return {
        "provider": doc["provider"], "threads": doc["threads"], "runs": doc["runs"], "batch": doc["model"]["batch"],
        "dense_p50_ms": doc["baseline"]["p50_ms"], "pruned_p50_ms": doc["model"]["p50_ms"],
        "ratio_p50": doc["ratio"]["p50"], "ratio_mean": doc["ratio"]["mean"],
        "note": "short measurement during prune; use `prunecli bench` for a gate",
    }


def run_prune(loaded: LoadedModel, config: PruneConfig, out: Path, *, force: bool = False,
              measure_latency: bool = True) -> dict:
    """Prune ``loaded`` to ``config``'s budget and write the bundle to ``out``; return report.json's content."""
    check_out_dir(out, force)
    if not loaded.arch:
        raise UsageError(
            "the pruned model cannot be saved pickle-free: the source has no architecture spec; "
            "pass --arch SPEC naming the pickled model's architecture"
        )
    timings: dict = {}
    started = time.perf_counter()
    plan, analysis, fit, dense, targets, round_to = plan_model(loaded, config, timings)

    t0 = time.perf_counter()
    pruned = shrink_copy(loaded, plan)
    dense_cost = measure(loaded.model, loaded.example_input)
    pruned_cost = measure(pruned, loaded.example_input)
    timings["shrink_s"] = time.perf_counter() - t0
    achieved = {"flops": pruned_cost.flops, "params": pruned_cost.params}

    previous = loaded.recipe["plans"] if loaded.kind == "bundle" and loaded.recipe else []
    source = {
        "arch": loaded.arch,
        "kind": loaded.kind,
        "path": str(loaded.source) if loaded.source else None,
        "sha256": loaded.source_sha256,
    }
    report = {
        "schema_version": SCHEMA_VERSION,
        "versions": versions(),
        "source": source,
        "input_shape": list(loaded.input_shape),
        "config": {
            "criterion": config.criterion,
            "allocation": config.allocation,
            "round_to": round_to,
            "min_channels": config.min_channels,
            "max_group_prune": config.max_group_prune,
            "ignore": list(constraints_for(loaded, config.ignore, config.round_to)[0]),
            "seed": config.seed,
            "tolerance": config.tolerance,
            "opset": config.opset,
        },
        "units": {"flops": FLOPS_LABEL, "macs": MACS_LABEL, "params": PARAMS_LABEL},
        "dense": {"flops": dense_cost.flops, "params": dense_cost.params, "macs": dense_cost.macs},
        "budget": budget_report(config, dense, targets, achieved),
        "achieved": {
            "flops": pruned_cost.flops,
            "params": pruned_cost.params,
            "macs": pruned_cost.macs,
            **pruned_cost.ratio_to(dense_cost),
        },
        "groups": [
            {"root": g.root, "before": g.channels, "after": len(g.keep), "removed": len(g.removed)}
            for g in plan.groups
        ],
        "search": {"cost_evaluations": fit.evaluations},
        "timings": timings,
    }

    with atomic_dir(out, force) as tmp:
        t0 = time.perf_counter()
        exporter = export_onnx(pruned, loaded.example_input, tmp / "model.onnx", config.opset)
        timings["export_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        check = verify_onnx(pruned, tmp / "model.onnx", loaded.input_shape)
        timings["verify_s"] = time.perf_counter() - t0
        report["onnx"] = {"file": "model.onnx", "opset": config.opset, "exporter": exporter, "dynamic_batch": True, **check}
        if measure_latency:
            t0 = time.perf_counter()
            report["latency"] = latency_ratio(loaded.model, tmp / "model.onnx", loaded.example_input,
                                              loaded.input_shape, config.opset)
            timings["latency_s"] = time.perf_counter() - t0
        write_weights(pruned, tmp / WEIGHTS)
        recipe = make_recipe(
            {**source, "arch": (loaded.recipe["source"]["arch"] if loaded.kind == "bundle" else loaded.arch)},
            loaded.input_shape,
            previous + [plan.to_json()],
        )
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=1))
        timings["total_s"] = time.perf_counter() - started
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        from .report import prune_markdown

        (tmp / "report.md").write_text(prune_markdown(report))
    return report


def run_export(loaded: LoadedModel, out: Path, *, opset: int = 18, force: bool = False) -> dict:
    """Export ``loaded`` to ``out`` (an .onnx path) with the same checks as `prune`; atomic."""
    import os
    import tempfile

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"--out {out}: give a path ending in .onnx")
    if out.exists() and not force:
        raise UsageError(f"--out {out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        exporter = export_onnx(loaded.model, loaded.example_input, tmp, opset)
        check = verify_onnx(loaded.model, tmp, loaded.input_shape)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(out), "opset": opset, "exporter": exporter, "input_shape": list(loaded.input_shape),
            "macs": count_macs(loaded.model, loaded.example_input), **check}
