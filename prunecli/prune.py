"""The `prune` pipeline: plan (graph -> scores -> allocate -> fit budget) -> schedule (shrink, fine-tune) ->
export -> bundle.

Each step is a stage module; this one only sequences them and assembles the report. No stage imports it.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

from .bundle import INT8_ONNX, ONNX, RECIPE, WEIGHTS, make_recipe, write_weights
from .config import PruneConfig
from .cost import FLOPS_LABEL, MACS_LABEL, PARAMS_LABEL, measure
from .errors import BudgetNotMet, UsageError
from .deadline import bounded
from .export import export_onnx, export_verified, external_data_name
from .inspect import constraints_for
from .load import LoadedModel
from .outputs import atomic_dir, check_out_dir
from .plan import Plan
from .planner import allocation_settings, check_budgets, dense_flops_params

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


def latency_ratio(dense_model, pruned_onnx: Path, example_input, input_shape, opset: int, exporter: str,
                  settings=None, halfwidth: float | None = None) -> dict:
    """Dense vs pruned on the runtime, interleaved in one process; the dense model goes through the same exporter
    as the pruned one, so the ratio compares like with like. Without a latency budget a short measurement (the
    report's ``latency``); with one, until the ratio's 95% interval is within +-``halfwidth``."""
    import tempfile

    from .config import LatencySettings
    from .latency import cpu_model, physical_cores, runtime_for, statistics

    settings = settings or LatencySettings()
    runtime = settings.runtime(warmup=5)
    with tempfile.TemporaryDirectory(prefix="prunecli-dense-") as tmp:
        dense_onnx = Path(tmp) / "dense.onnx"
        export_onnx(dense_model, example_input, dense_onnx, opset, exporter=exporter)
        measuring = runtime_for(runtime)
        pruned = measuring.open("model", pruned_onnx, runtime, tuple(input_shape))
        dense = measuring.open("baseline", dense_onnx, runtime, tuple(input_shape))
        try:
            if halfwidth is None:
                ratio = measuring.ratio(pruned, dense, settings.stat, halfwidth=1.0, block=5, min_runs=20, max_runs=20)
            else:
                ratio = measuring.ratio(pruned, dense, settings.stat, halfwidth=halfwidth)
        finally:
            measuring.drop(pruned, dense)
    p, d = statistics(pruned.samples_ms, pruned.batch), statistics(dense.samples_ms, dense.batch)
    return {
        "provider": pruned.provider, "threads": settings.threads or physical_cores(),
        "cpu": cpu_model(), "runs": len(pruned.samples_ms), "batch": pruned.batch, "stat": settings.stat,
        "dense_p50_ms": d["p50_ms"], "pruned_p50_ms": p["p50_ms"],
        "ratio_p50": p["p50_ms"] / d["p50_ms"], "ratio_mean": p["mean_ms"] / d["mean_ms"],
        "ratio": ratio.ratio, "ci95": [ratio.low, ratio.high], "dense_ms": ratio.baseline_ms, "pruned_ms": ratio.model_ms,
        "note": ("the latency budget's final measurement" if halfwidth is not None
                 else "short measurement during prune; use `prunecli bench` for a gate"),
    }


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
        "binding": fit["binding"], "stat": settings.stat, "runs": measured["runs"], "batch": measured["batch"],
        "threads": measured["threads"], "provider": measured["provider"], "cpu": measured["cpu"],
        "margin": settings.margin, "window": settings.window, "halfwidth": settings.halfwidth,
        "fit_probes": [p.to_json() for p in fit["probes"]],
        "latency_model": fit["model"],
    }


def run_prune(loaded: LoadedModel, config: PruneConfig, out: Path, *, force: bool = False,
              measure_latency: bool = True, data=None, finetune=None, schedule: str = "oneshot",
              resume: bool = False, progress=None, criterion_batches: int = 8, placement=None,
              world=None) -> dict | None:
    """Prune ``loaded`` to ``config``'s budget (optionally fine-tuning on ``data``) and write the bundle to ``out``.

    Returns report.json's content. With fine-tuning, ``out/checkpoints/`` holds a checkpoint per epoch;
    an interrupt (Ctrl-C) during fine-tuning still writes the bundle, from the best checkpoint, and the
    report says ``interrupted``; ``resume=True`` continues from ``out/checkpoints/last.pt``.

    ``placement``: where the data stages run (device, AMP). ``world``: under torchrun, every rank calls this;
    rank 0 plans and writes (checkpoints, bundle, report) and returns the report, the others train their share
    and return None.
    """
    import shutil

    from .data import shard
    from .device import CPU
    from .distributed import SINGLE
    from .finetune import LAST, FinetuneConfig, evaluate, read_resume_state
    from .schedule import SCHEDULES, Context, schedule_settings

    placement, world = placement or CPU, world or SINGLE
    finetune = finetune or FinetuneConfig()
    run_schedule = SCHEDULES.get(schedule)
    training = data is not None and finetune.epochs > 0
    if not resume and world.main:
        check_out_dir(out, force, inputs=input_paths(loaded))
    check_budgets(config, dense_flops_params(loaded))
    if not loaded.arch:
        raise UsageError(
            "the pruned model cannot be saved pickle-free: the source has no architecture spec; "
            "pass --arch SPEC naming the pickled model's architecture"
        )
    checkpoints = out / "checkpoints" if training else None
    previous = loaded.recipe["plans"] if loaded.kind == "bundle" and loaded.recipe else []
    base_arch = loaded.arch  # typed by the user, or a data spec read from the model file
    resume_state = None
    if resume:
        if not training:
            raise UsageError("--resume continues fine-tuning: pass the same --data and --epochs as the first run")
        resume_state = _resume_state(out, base_arch, previous)
        resume_state["state"] = read_resume_state(checkpoints)

    timings: dict = {}
    started = time.perf_counter()
    batches = None
    if data is not None and world.main:
        batches = [batch for _, batch in zip(range(criterion_batches), data.train)]
    accuracy = {}
    shards = shard(data, world.rank, world.world_size, config.seed) if data is not None else None
    if data is not None:
        eval_loader = shards.test if shards.test is not None else shards.val
        accuracy["split"] = "test" if data.test is not None else "val"
        accuracy["dense"] = evaluate(loaded.model, eval_loader, placement=placement, world=world)
    if training and not resume and world.main:
        if out.exists() and force:
            shutil.rmtree(out)
        checkpoints.mkdir(parents=True, exist_ok=True)

    def on_pruned(outcome) -> None:  # the final structure exists: make it resumable
        if checkpoints is not None and resume_state is None and world.main:
            recipe = make_recipe({"arch": base_arch}, loaded.input_shape, previous + [p.to_json() for p in outcome.plans])
            (checkpoints / "recipe.json").write_text(json.dumps(recipe, indent=1))
            (checkpoints / "state.json").write_text(json.dumps({"fit_cost": outcome.fit_cost, "round_to": outcome.round_to,
                                                                 "accuracy_pruned": outcome.accuracy_pruned}))

    def rebuild(plans):  # ranks other than 0: the structure rank 0's plans give
        from .bundle import rebuild_structure

        recipe = make_recipe({"arch": base_arch}, loaded.input_shape, previous + [p.to_json() for p in plans])
        return rebuild_structure(recipe, base_arch)

    ctx = Context(loaded, config, finetune, data, batches, checkpoints, timings, progress, resume_state, on_pruned,
                  placement=placement, world=world, shards=shards, rebuild=rebuild)
    t0 = time.perf_counter()
    try:
        outcome = run_schedule(ctx)
    except BaseException:
        if checkpoints is not None and not resume and world.main and not (checkpoints / LAST).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing resumable yet: leave nothing behind
        raise
    timings["schedule_s"] = time.perf_counter() - t0
    pruned = outcome.model.eval()
    if data is not None:
        accuracy["pruned"] = outcome.accuracy_pruned
        accuracy["finetuned"] = evaluate(pruned, eval_loader, placement=placement, world=world) if training else None
        accuracy["best_epoch"] = outcome.best_epoch
    if not world.main:
        return None

    t0 = time.perf_counter()
    dense_cost = measure(loaded.model, loaded.example_input)
    pruned_cost = measure(pruned, loaded.example_input)
    timings["measure_s"] = time.perf_counter() - t0
    achieved = {"flops": pruned_cost.flops, "params": pruned_cost.params}
    dense = {"flops": dense_cost.flops, "params": dense_cost.params}
    targets = {b.metric: b.resolve(dense[b.metric]) for b in config.budgets()}
    first_plan = outcome.plans[0]
    source = {"arch": loaded.arch, "kind": loaded.kind, "path": str(loaded.source) if loaded.source else None,
              "sha256": loaded.source_sha256}
    allocation = allocation_settings(config)
    report = {
        "schema_version": SCHEMA_VERSION,
        "versions": versions(),
        "source": source,
        "input_shape": list(loaded.input_shape),
        "config": {
            "criterion": config.criterion, "allocation": config.allocation, "schedule": schedule,
            "round_to": outcome.round_to, "min_channels": config.min_channels,
            "max_group_prune": config.max_group_prune,
            "ignore": list(constraints_for(loaded, config.ignore, config.round_to)[0]),
            "seed": config.seed, "tolerance": config.tolerance, "opset": config.opset,
            "allocation_settings": _settings_json(allocation),
            "schedule_settings": _settings_json(schedule_settings(schedule, config)),
            "sensitivity": _settings_json(allocation) if config.allocation == "sensitivity" else None,  # schema v1 key
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
        "groups": _group_rows(first_plan, loaded.model, pruned),
        "timings": timings,
    }
    if outcome.evidence.get("round_to_note"):
        report["config"]["round_to_note"] = outcome.evidence["round_to_note"]
    if config.latency is not None:
        report["config"]["latency"] = dataclasses.asdict(config.latency_settings)
    check_measured_budget(config, report["budget"])
    if outcome.evidence.get("correctness"):  # one per pruning step: the pruned model checked against the dense one
        report["correctness"] = outcome.evidence["correctness"]
    if outcome.evidence.get("criterion_fallbacks"):
        report["criterion_fallbacks"] = outcome.evidence["criterion_fallbacks"]
    search = outcome.evidence.get("search")
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

    with atomic_dir(out, force, merge=training, keep=(RECIPE,)) as tmp:
        t0 = time.perf_counter()
        with bounded("export", config.timeout):
            exporter, check = export_verified(pruned, loaded.example_input, tmp / ONNX, config.opset, loaded.input_shape)
        timings["export_verify_s"] = time.perf_counter() - t0
        files = [ONNX] + ([external_data_name(tmp / ONNX)] if (tmp / external_data_name(tmp / ONNX)).exists() else [])
        report["onnx"] = {"file": ONNX, "files": files, "self_contained": len(files) == 1, "opset": config.opset,
                          "exporter": exporter, "dynamic_batch": True, **check}
        if config.quantize is not None:  # first: with a latency budget, the INT8 model is what is measured
            report["int8"] = _int8(tmp, data, config.quantize, loaded.input_shape, measure_latency, timings)
        int8_kept = report.get("int8", {}).get("kept") == "int8"
        if config.latency is not None:
            t0 = time.perf_counter()
            deployed = INT8_ONNX if int8_kept else ONNX
            report["latency"] = latency_ratio(loaded.model, tmp / deployed, loaded.example_input, loaded.input_shape,
                                              config.opset, exporter, config.latency_settings,
                                              halfwidth=config.latency_settings.halfwidth)
            report["latency"]["model"] = deployed
            report["budget"]["latency"] = latency_budget_report(config, report["latency"], outcome.evidence)
            timings["latency_s"] = time.perf_counter() - t0
        elif measure_latency:
            t0 = time.perf_counter()
            report["latency"] = latency_ratio(loaded.model, tmp / ONNX, loaded.example_input,
                                              loaded.input_shape, config.opset, exporter, config.latency_settings)
            report["latency"]["model"] = ONNX
            if int8_kept:  # the INT8 model against dense, measured the same way
                report["int8"]["latency_vs_dense"] = _versus_dense(latency_ratio(
                    loaded.model, tmp / INT8_ONNX, loaded.example_input, loaded.input_shape, config.opset, exporter,
                    config.latency_settings))
            timings["latency_s"] = time.perf_counter() - t0
        if config.latency is not None and int8_kept:
            report["int8"]["latency_vs_dense"] = _versus_dense(report["latency"])
        if "latency" in outcome.evidence and config.latency is None:
            report["latency_model"] = outcome.evidence["latency"]["model"]
        if search is not None:
            from .report import plot_alpha

            metric = "flops" if config.flops is not None else "params"
            plot_alpha(search.history, search.roots, tmp / "alpha.png", metric=metric)
            (tmp / "alpha_history.json").write_text(json.dumps({"groups": search.roots, "steps": search.history}))
        write_weights(pruned, tmp / WEIGHTS)
        timings["total_s"] = time.perf_counter() - started
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        from .report import prune_markdown

        (tmp / "report.md").write_text(prune_markdown(report))
        recipe = make_recipe({**source, "arch": base_arch}, loaded.input_shape,
                             previous + [p.to_json() for p in outcome.plans], directory=tmp)
        (tmp / RECIPE).write_text(json.dumps(recipe, indent=1))
    return report


def _int8(tmp: Path, data, quantize, input_shape, measure_latency: bool, timings: dict) -> dict:
    """``model.int8.onnx`` beside the fp32 ONNX (:mod:`prunecli.quantize`), with its latency against the fp32 one
    (``prunecli bench``'s interleaved measurement); exit 1 with ``require`` when the accuracy guard keeps fp32."""
    from .quantize import run_quantize

    t0 = time.perf_counter()
    doc = run_quantize(tmp / ONNX, tmp / INT8_ONNX, data, quantize)
    if doc["kept"] == "fp32" and quantize.require:
        guard = doc["guard"]
        raise BudgetNotMet(f"--require-int8: INT8 loses {guard['drop_points']:.2f} top-1 points on {guard['split']}, "
                           f"more than --max-quant-drop {quantize.max_drop:g}; no bundle was written")
    if doc["kept"] == "int8" and measure_latency:
        from .bench import BenchConfig, run_bench

        bench = run_bench(tmp / INT8_ONNX, tmp / ONNX, BenchConfig(runs=50, warmup=5), tuple(input_shape))
        doc["latency_vs_fp32"] = {"p50_ms": bench["model"]["p50_ms"], "fp32_p50_ms": bench["baseline"]["p50_ms"],
                                  "ratio_p50": bench["ratio"]["p50"], "runs": 50, "threads": bench.get("threads"),
                                  "batch": bench["model"]["batch"]}
    timings["int8_s"] = time.perf_counter() - t0
    return doc


def _versus_dense(measured: dict) -> dict:
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


def _settings_json(settings) -> dict | None:
    return dataclasses.asdict(settings) if settings is not None else None


def input_paths(loaded: LoadedModel) -> list[Path]:
    """The files a run reads, which no output may replace or sit inside."""
    return [loaded.source] if loaded.source is not None else []


def _group_rows(first_plan: Plan, dense, pruned) -> list[dict]:
    """Channels per group before (dense) and after (the final model's root layer width, in the group's channels:
    a group whose channel stands for several of its root's, as GhostNet's, counts each once)."""
    from .graph import root_widths

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


def _resume_state(out: Path, base_arch: str, previous: list) -> dict:
    """Rebuild the pruned structure recorded in out/checkpoints/recipe.json for --resume.

    The structure is rebuilt from this run's MODEL (``base_arch``, what the user typed or a data spec read
    from the model file), never from the spec in the checkpoint's recipe, which must name the same one.
    """
    from .bundle import read_recipe_file, rebuild_structure

    checkpoints = out / "checkpoints"
    recipe_file = checkpoints / RECIPE
    if not recipe_file.is_file():
        raise UsageError(f"--resume: {recipe_file} not found; run without --resume first")
    recipe = read_recipe_file(recipe_file)
    recorded = recipe["source"].get("arch")
    if recorded != base_arch:
        raise UsageError(f"--resume: {recipe_file} was made from {recorded!r}, not MODEL's {base_arch!r}; "
                         "pass the MODEL of the first run")
    try:
        state = json.loads((checkpoints / "state.json").read_text())
        state = {"fit_cost": dict(state["fit_cost"]), "round_to": int(state["round_to"]),
                 "accuracy_pruned": state.get("accuracy_pruned")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--resume: {checkpoints / 'state.json'} is missing or damaged ({exc}); "
                         "rerun without --resume") from exc
    if previous != recipe["plans"][:len(previous)]:
        raise UsageError(f"--resume: {recipe_file} does not start with MODEL's own plans; pass the MODEL of the first run")
    model = rebuild_structure(recipe, base_arch)
    return {"model_structure": model, "plans": [Plan.from_json(p) for p in recipe["plans"][len(previous):]],
            "fit_cost": state["fit_cost"], "round_to": state["round_to"], "accuracy_pruned": state["accuracy_pruned"]}
