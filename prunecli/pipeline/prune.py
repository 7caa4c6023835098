"""The `prune` pipeline: plan (graph -> scores -> allocate -> fit budget) -> schedule (shrink, fine-tune) ->
measure -> report -> export, INT8, latency -> bundle.

It only sequences: each stage returns what it decided (the schedule's Outcome, the export's check, the latency
measurement) and :mod:`prunecli.pipeline.report` builds report.json from those. No stage imports this module.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from prunecli.artifacts.bundle import (
    INT8_ONNX,
    ONNX,
    RECIPE,
    WEIGHTS,
    make_recipe,
    rebuild_structure,
    write_weights,
)
from prunecli.artifacts.load import LoadedModel
from prunecli.core.deadline import bounded
from prunecli.core.device import CPU
from prunecli.core.distributed import SINGLE
from prunecli.core.errors import BudgetNotMet, UsageError
from prunecli.core.outputs import atomic_dir, check_out_dir
from prunecli.graph.cost import measure
from prunecli.graph.plans import Plan
from prunecli.pipeline.config import PruneConfig
from prunecli.pipeline.report import (
    build_report,
    latency_budget_report,
    source_of,
    versus_dense,
)
from prunecli.pipeline.schedules import Context, run_schedule
from prunecli.plan.constraints import constraints_for
from prunecli.plan.stage import check_budgets, dense_flops_params
from prunecli.runtime.export import export_verified, external_data_name
from prunecli.runtime.pair import latency_ratio
from prunecli.train.data import shard
from prunecli.train.finetune import LAST, FinetuneConfig, evaluate, read_resume_state


def run_prune(loaded: LoadedModel, config: PruneConfig, out: Path, *, force: bool = False,
              measure_latency: bool = True, data=None, finetune=None, resume: bool = False, progress=None, criterion_batches: int = 8, placement=None,
              world=None, dense_accuracy: dict | None = None) -> dict | None:
    """Prune ``loaded`` to ``config``'s budget (optionally fine-tuning on ``data``) and write the bundle to ``out``.

    Returns report.json's content. With fine-tuning, ``out/checkpoints/`` holds a checkpoint per epoch;
    an interrupt (Ctrl-C) during fine-tuning still writes the bundle, from the best checkpoint, and the
    report says ``interrupted``; ``resume=True`` continues from ``out/checkpoints/last.pt``.

    ``dense_accuracy``: the dense model's accuracy on the evaluation split when the caller has it already (`compare`
    runs many prunes of one model), instead of evaluating it again.
    ``placement``: where the data stages run (device, AMP). ``world``: under torchrun, every rank calls this;
    rank 0 plans and writes (checkpoints, bundle, report) and returns the report, the others train their share
    and return None.
    """

    placement, world = placement or CPU, world or SINGLE
    finetune = finetune or FinetuneConfig()
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
        accuracy["dense"] = dense_accuracy or evaluate(loaded.model, eval_loader, placement=placement, world=world)
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
    report = build_report(loaded, config, outcome, pruned, dense_cost, pruned_cost,
                          ignore=constraints_for(loaded, config.ignore, config.round_to)[0], finetune=finetune,
                          data=data, placement=placement, world=world, accuracy=accuracy, timings=timings)
    with atomic_dir(out, force, merge=training, keep=(RECIPE,)) as tmp:
        exporter = _export(pruned, loaded, config, tmp, report, timings)
        if config.quantize is not None:  # first: with a latency budget, the INT8 model is what is measured
            report["int8"] = _int8(tmp, data, config.quantize, loaded.input_shape, measure_latency, timings)
        _latency(loaded, config, tmp, exporter, report, outcome.evidence, measure_latency, timings)
        search = outcome.evidence.get("search")
        if search is not None:
            from prunecli.pipeline.plots import plot_alpha

            plot_alpha(search.history, search.roots, tmp / "alpha.png", metric=config.fit_metric)
            (tmp / "alpha_history.json").write_text(json.dumps({"groups": search.roots, "steps": search.history}))
        write_weights(pruned, tmp / WEIGHTS)
        timings["total_s"] = time.perf_counter() - started
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        from prunecli.pipeline.markdown import prune_markdown

        (tmp / "report.md").write_text(prune_markdown(report))
        recipe = make_recipe({**source_of(loaded), "arch": base_arch}, loaded.input_shape,
                             previous + [p.to_json() for p in outcome.plans], directory=tmp)
        (tmp / RECIPE).write_text(json.dumps(recipe, indent=1))
    return report


def _export(pruned, loaded: LoadedModel, config: PruneConfig, tmp: Path, report: dict, timings: dict) -> str:
    """model.onnx, verified against PyTorch; report.json ``onnx``. Returns the exporter used."""
    t0 = time.perf_counter()
    with bounded("export", config.timeout):
        exporter, check = export_verified(pruned, loaded.example_input, tmp / ONNX, config.opset, loaded.input_shape)
    timings["export_verify_s"] = time.perf_counter() - t0
    files = [ONNX] + ([external_data_name(tmp / ONNX)] if (tmp / external_data_name(tmp / ONNX)).exists() else [])
    report["onnx"] = {"file": ONNX, "files": files, "self_contained": len(files) == 1, "opset": config.opset,
                      "exporter": exporter, "dynamic_batch": True, **check}
    return exporter


def _latency(loaded: LoadedModel, config: PruneConfig, tmp: Path, exporter: str, report: dict, evidence: dict,
             measure_latency: bool, timings: dict) -> None:
    """report.json ``latency`` (and ``budget.latency`` with a latency budget): the deployed model against dense,
    timed as :func:`prunecli.runtime.pair.latency_ratio` does; with a budget, until its interval is narrow."""
    int8_kept = report.get("int8", {}).get("kept") == "int8"
    if config.latency is None and not measure_latency:
        return
    t0 = time.perf_counter()

    def against_dense(name: str, halfwidth=None) -> dict:
        budget, verdict = config.latency, None
        if budget is not None and not budget.absolute:  # met, and within the window below the target
            lower = budget.value * (1 - config.latency_settings.window)
            verdict = lambda r: (r.ratio > budget.value, r.ratio < lower)  # noqa: E731
        measured = latency_ratio(loaded.model, tmp / name, loaded.example_input, loaded.input_shape, config.opset,
                                 exporter, config.latency_settings, halfwidth=halfwidth, verdict=verdict)
        measured["model"] = name
        return measured

    if config.latency is not None:
        name = INT8_ONNX if int8_kept else ONNX
        report["latency"] = (_fit_measured(config, evidence, tmp / name)
                             or against_dense(name, config.latency_settings.halfwidth))
        report["latency"]["model"] = name
        report["budget"]["latency"] = latency_budget_report(config, report["latency"], evidence)
        if int8_kept:
            report["int8"]["latency_vs_dense"] = versus_dense(report["latency"])
    else:
        report["latency"] = against_dense(ONNX)
        if int8_kept:  # the INT8 model against dense, measured the same way
            report["int8"]["latency_vs_dense"] = versus_dense(against_dense(INT8_ONNX))
    timings["latency_s"] = time.perf_counter() - t0


def _fit_measured(config: PruneConfig, evidence: dict, artifact: Path) -> dict | None:
    """The latency budget's final measurement when the fit already made it: the accepted plan was exported and timed
    against the dense model in fresh measuring processes, and ``artifact`` has the same graph (operators,
    attributes, shapes: :func:`prunecli.runtime.export.graph_signature`), so it runs the same kernels on the same
    shapes. The fit decided it as the median of three processes (two when the first two agree). None when it must
    be measured (another graph, e.g. INT8 kept as fp32, or a resumed run)."""
    from prunecli.runtime.export import graph_signature
    from prunecli.runtime.pair import ratio_report
    from prunecli.runtime.timing import PROVIDERS, physical_cores

    fit = evidence.get("latency") or {}
    probe, signature = fit.get("probe"), fit.get("signature")
    if probe is None or signature is None or len(probe.ratio.others.get("processes") or []) < 2:
        return None
    if graph_signature(artifact) != signature:
        return None
    settings = config.latency_settings
    doc = ratio_report(probe.ratio, PROVIDERS[settings.provider], settings.threads or physical_cores(), fit["batch"],
                       settings.stat, "the latency budget's final measurement: made by the fit on the accepted plan, "
                       "whose graph is this model's (same operators and shapes), decided on the median of three "
                       "measuring processes")
    doc["measured_on"] = "the fit's accepted plan (same graph)"
    return doc


def _int8(tmp: Path, data, quantize, input_shape, measure_latency: bool, timings: dict) -> dict:
    """``model.int8.onnx`` beside the fp32 ONNX (:mod:`prunecli.runtime.quantize`), with its latency against the fp32 one
    (``prunecli bench``'s interleaved measurement); exit 1 with ``require`` when the accuracy guard keeps fp32."""
    from prunecli.runtime.quantize import run_quantize

    t0 = time.perf_counter()
    doc = run_quantize(tmp / ONNX, tmp / INT8_ONNX, data, quantize)
    if doc["kept"] == "fp32" and quantize.require:
        guard = doc["guard"]
        raise BudgetNotMet(f"--require-int8: INT8 loses {guard['drop_points']:.2f} top-1 points on {guard['split']}, "
                           f"more than --max-quant-drop {quantize.max_drop:g}; no bundle was written")
    if doc["kept"] == "int8" and measure_latency:
        from prunecli.runtime.bench import BenchConfig, run_bench

        bench = run_bench(tmp / INT8_ONNX, tmp / ONNX, BenchConfig(runs=50, warmup=5), tuple(input_shape))
        doc["latency_vs_fp32"] = {"p50_ms": bench["model"]["p50_ms"], "fp32_p50_ms": bench["baseline"]["p50_ms"],
                                  "ratio_p50": bench["ratio"]["p50"], "runs": 50, "threads": bench.get("threads"),
                                  "batch": bench["model"]["batch"]}
    timings["int8_s"] = time.perf_counter() - t0
    return doc


def input_paths(loaded: LoadedModel) -> list[Path]:
    """The files a run reads, which no output may replace or sit inside."""
    return [loaded.source] if loaded.source is not None else []


def _resume_state(out: Path, base_arch: str, previous: list) -> dict:
    """Rebuild the pruned structure recorded in out/checkpoints/recipe.json for --resume.

    The structure is rebuilt from this run's MODEL (``base_arch``, what the user typed or a data spec read
    from the model file), never from the spec in the checkpoint's recipe, which must name the same one.
    """
    from prunecli.artifacts.bundle import read_recipe_file

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
