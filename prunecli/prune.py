"""The `prune` pipeline: graph -> scores -> allocate -> fit budget -> shrink -> export -> bundle.

Each step is a stage module; this one only sequences them and assembles the report.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from . import allocate
from .budget import CostOracle, fit_budget
from .bundle import ONNX, RECIPE, WEIGHTS, make_recipe, write_weights
from .config import DEFAULT_SEARCH_EPOCHS, PruneConfig
from .cost import FLOPS_LABEL, MACS_LABEL, PARAMS_LABEL, measure
from .criteria import CRITERIA, channel_scores
from .errors import RuntimeFailure, UsageError
from .export import export_onnx, export_verified, external_data_name
from .inspect import constraints_for, prunable_groups
from .load import LoadedModel
from .outputs import atomic_dir, check_out_dir
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


def sensitivity_config(config: PruneConfig):
    """The scan settings `--allocation sensitivity` uses: its criterion, the rest from ``config.extra``."""
    from .sensitivity import DEFAULT_LEVELS, SensitivityConfig

    return SensitivityConfig(levels=tuple(config.extra.get("sensitivity_levels", DEFAULT_LEVELS)),
                             criterion=config.criterion, metric=config.extra.get("sensitivity_metric", "loss"),
                             batches=int(config.extra.get("sensitivity_batches", 10)), seed=config.seed)


def _evidence(allocator, loaded: LoadedModel, config: PruneConfig, analysis, data, batches, progress, timings) -> dict:
    """What a data-driven allocator declared it needs (``needs``), computed here so allocators stay pure."""
    needs = getattr(allocator, "needs", None)
    if needs is None:
        return {}
    if data is None:
        raise UsageError(f"--allocation {config.allocation} evaluates the model: pass --data SPEC (e.g. --data digits)")
    if needs == "sensitivity":
        from .sensitivity import cached_scan

        scan = cached_scan(loaded.model, loaded.example_input, analysis.groups, data.val, sensitivity_config(config),
                           criterion_batches=batches, progress=progress)
        timings["sensitivity"] = {"scan_s": scan.wall_s, "cached": scan.cached, "key": scan.key}
        return {"sensitivity": scan}
    if needs == "search":
        from .allocate.learned import SearchConfig, search

        metric = "flops" if config.flops is not None else "params"
        budget = config.flops if config.flops is not None else config.params
        target = budget.resolve(analysis.flops if metric == "flops" else analysis.params)
        try:
            search_config = SearchConfig(epochs=int(config.extra.get("search_epochs", DEFAULT_SEARCH_EPOCHS)), seed=config.seed)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        result = search(loaded.model, loaded.example_input, analysis.groups, data.train, metric, target, search_config,
                        progress=progress)
        timings["search_allocation_s"] = result.wall_s
        wanted = {g.root: result.alpha[g.root] * g.channels for g in analysis.groups}  # the fit's last gap follows these
        if config.extra.get("learned_weights", "searched") == "dense":
            # a control (benchmarks/quality.py): the learned counts applied to the input's weights, channels chosen by
            # --criterion, so that the allocation is judged apart from the search's training
            return {"search": result, "prefer": wanted}
        return {"search": result, "scores": result.scores, "source_model": result.model, "prefer": wanted}
    raise RuntimeFailure(f"allocator {config.allocation!r} needs {needs!r}, which prunecli does not provide")


def check_budgets(config: PruneConfig, dense: dict) -> dict:
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
    from .cost import count_flops, count_params

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


def plan_model(loaded: LoadedModel, config: PruneConfig, timings: dict, batches=None, data=None, progress=None):
    """Decide which channels go (a PlanResult). Never changes ``loaded``.

    ``data`` (Loaders) is needed by data-driven allocators (sensitivity); ``batches`` by data-driven criteria.
    """
    CRITERIA.get(config.criterion)  # unknown names fail before any work
    allocator = allocate.ALLOCATORS.get(config.allocation)
    t0 = time.perf_counter()
    analysis, round_to = prunable_groups(loaded, ignore=config.ignore, round_to=config.round_to,
                                         min_channels=config.min_channels)
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
    scores = channel_scores(loaded.model, loaded.example_input, [(g.root, g.channels) for g in analysis.groups],
                            config.criterion, seed=config.seed, batches=batches, notes=notes)
    timings["score_s"] = time.perf_counter() - t0
    evidence = _evidence(allocator, loaded, config, analysis, data, batches, progress, timings)
    if notes:
        evidence["criterion_fallbacks"] = notes
    order = allocator(analysis.groups, scores, config, evidence)
    scores = evidence.get("scores", scores)  # learned: keep the channels its search ranked highest

    t0 = time.perf_counter()
    hint = (f"with --round-to {round_to} and --min-channels {config.min_channels}"
            + (f" and --max-group-prune {config.max_group_prune}" if config.allocation == "global" else "")
            + "; lower those (or drop --ignore patterns) to reach further")
    oracle = CostOracle(loaded.model, loaded.example_input, analysis.groups)
    fit = fit_budget(analysis.groups, order, targets, oracle, dense, tolerance=config.tolerance, hint=hint,
                     prefer=evidence.get("prefer"))
    timings["search_s"] = time.perf_counter() - t0

    plan = Plan(
        groups=tuple(
            GroupPlan(g.root, g.channels, select_keep(scores[g.root], fit.counts[g.root], g.channel_groups))
            for g in analysis.groups
        ),
        criterion=config.criterion if "scores" not in evidence else f"{config.criterion} (search: bn|l1 on searched weights)",
        allocation=config.allocation,
    )
    source = loaded if "source_model" not in evidence else dataclasses.replace(loaded, model=evidence["source_model"])
    return PlanResult(plan, analysis, fit, dense, targets, round_to, source, evidence)


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


def latency_ratio(dense_model, pruned_onnx: Path, example_input, input_shape, opset: int, exporter: str,
                  runs: int = 20) -> dict:
    """A short interleaved onnxruntime measurement of dense vs pruned (CPU, batch of the input shape); the dense
    model goes through the same exporter as the pruned one, so the ratio compares like with like."""
    import tempfile

    from .bench import BenchConfig, run_bench

    with tempfile.TemporaryDirectory(prefix="prunecli-dense-") as tmp:
        dense_onnx = Path(tmp) / "dense.onnx"
        export_onnx(dense_model, example_input, dense_onnx, opset, exporter=exporter)
        doc = run_bench(pruned_onnx, dense_onnx, BenchConfig(warmup=3, runs=runs, block=5), tuple(input_shape))
    return {
        "provider": doc["provider"], "threads": doc["threads"], "runs": doc["runs"], "batch": doc["model"]["batch"],
        "dense_p50_ms": doc["baseline"]["p50_ms"], "pruned_p50_ms": doc["model"]["p50_ms"],
        "ratio_p50": doc["ratio"]["p50"], "ratio_mean": doc["ratio"]["mean"],
        "note": "short measurement during prune; use `prunecli bench` for a gate",
    }


def run_prune(loaded: LoadedModel, config: PruneConfig, out: Path, *, force: bool = False,
              measure_latency: bool = True, data=None, finetune=None, schedule: str = "oneshot",
              resume: bool = False, progress=None, criterion_batches: int = 8) -> dict:
    """Prune ``loaded`` to ``config``'s budget (optionally fine-tuning on ``data``) and write the bundle to ``out``.

    Returns report.json's content. With fine-tuning, ``out/checkpoints/`` holds a checkpoint per epoch;
    an interrupt (Ctrl-C) during fine-tuning still writes the bundle, from the best checkpoint, and the
    report says ``interrupted``; ``resume=True`` continues from ``out/checkpoints/last.pt``.
    """
    import shutil

    from .finetune import LAST, FinetuneConfig, evaluate, read_resume_state
    from .schedule import SCHEDULES, Context

    finetune = finetune or FinetuneConfig()
    run_schedule = SCHEDULES.get(schedule)
    training = data is not None and finetune.epochs > 0
    if not resume:
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
    if data is not None:
        batches = [batch for _, batch in zip(range(criterion_batches), data.train)]
    accuracy = {}
    if data is not None:
        eval_loader = data.test if data.test is not None else data.val
        accuracy["split"] = "test" if data.test is not None else "val"
        accuracy["dense"] = evaluate(loaded.model, eval_loader)
    if training and not resume:
        if out.exists() and force:
            shutil.rmtree(out)
        checkpoints.mkdir(parents=True, exist_ok=True)

    def on_pruned(outcome) -> None:  # the final structure exists: make it resumable
        if checkpoints is not None and resume_state is None:
            recipe = make_recipe({"arch": base_arch}, loaded.input_shape, previous + [p.to_json() for p in outcome.plans])
            (checkpoints / "recipe.json").write_text(json.dumps(recipe, indent=1))
            (checkpoints / "state.json").write_text(json.dumps({"fit_cost": outcome.fit_cost, "round_to": outcome.round_to,
                                                                 "accuracy_pruned": outcome.accuracy_pruned}))

    ctx = Context(loaded, config, finetune, data, batches, checkpoints, timings, progress, resume_state, on_pruned)
    t0 = time.perf_counter()
    try:
        outcome = run_schedule(ctx)
    except BaseException:
        if checkpoints is not None and not resume and not (checkpoints / LAST).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing resumable yet: leave nothing behind
        raise
    timings["schedule_s"] = time.perf_counter() - t0
    pruned = outcome.model.eval()
    if data is not None:
        accuracy["pruned"] = outcome.accuracy_pruned
        accuracy["finetuned"] = evaluate(pruned, eval_loader) if training else None
        accuracy["best_epoch"] = outcome.best_epoch

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
            "sensitivity": dataclasses.asdict(sensitivity_config(config)) if config.allocation == "sensitivity" else None,
            "finetune": dataclasses.asdict(finetune) if data is not None else None,
            "data": data.describe() if data is not None else None,
        },
        "units": {"flops": FLOPS_LABEL, "macs": MACS_LABEL, "params": PARAMS_LABEL},
        "dense": {"flops": dense_cost.flops, "params": dense_cost.params, "macs": dense_cost.macs},
        "budget": budget_report(config, dense, targets, achieved),
        "achieved": {"flops": pruned_cost.flops, "params": pruned_cost.params, "macs": pruned_cost.macs,
                     **pruned_cost.ratio_to(dense_cost)},
        "groups": _group_rows(first_plan, pruned),
        "timings": timings,
    }
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
    if outcome.interrupted:
        report["interrupted"] = True

    with atomic_dir(out, force, merge=training, keep=(RECIPE,)) as tmp:
        t0 = time.perf_counter()
        exporter, check = export_verified(pruned, loaded.example_input, tmp / ONNX, config.opset, loaded.input_shape)
        timings["export_verify_s"] = time.perf_counter() - t0
        files = [ONNX] + ([external_data_name(tmp / ONNX)] if (tmp / external_data_name(tmp / ONNX)).exists() else [])
        report["onnx"] = {"file": ONNX, "files": files, "self_contained": len(files) == 1, "opset": config.opset,
                          "exporter": exporter, "dynamic_batch": True, **check}
        if measure_latency:
            t0 = time.perf_counter()
            report["latency"] = latency_ratio(loaded.model, tmp / ONNX, loaded.example_input,
                                              loaded.input_shape, config.opset, exporter)
            timings["latency_s"] = time.perf_counter() - t0
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


def input_paths(loaded: LoadedModel) -> list[Path]:
    """The files a run reads, which no output may replace or sit inside."""
    return [loaded.source] if loaded.source is not None else []


def _group_rows(first_plan: Plan, pruned) -> list[dict]:
    """Channels per group before (dense) and after (the final model's root layer width)."""
    modules = dict(pruned.named_modules())
    rows = []
    for g in first_plan.groups:
        module = modules.get(g.root)
        after = getattr(module, "out_channels", getattr(module, "out_features", None))
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
