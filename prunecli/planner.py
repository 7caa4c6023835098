"""The plan stage: graph -> channel scores -> allocation -> exact budget fit -> which channels go.

:func:`plan_model` decides; :func:`shrink_copy` applies a plan to a copy. Data-driven allocators declare what
they need (``needs``) and their own frozen settings (``settings``) where they are registered; this module
provides the evidence and checks the settings, so allocators stay pure. Schedules (:mod:`prunecli.schedule`)
and the pipeline (:mod:`prunecli.prune`) call this stage; it imports neither.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from . import allocate
from .budget import CostOracle, counts_after, fit_budget
from .config import PruneConfig
from .criteria import CRITERIA, channel_scores
from .deadline import bounded
from .errors import RuntimeFailure, UsageError
from .inspect import prunable_groups
from .load import LoadedModel
from .plan import GroupPlan, Plan, first_kept, select_keep
from .shrink import remove_channels_


def settings_for(entry, given, flag: str):
    """The frozen settings an allocator or schedule declared (``settings=`` at registration): ``given`` if it is
    one, its defaults when None; anything else is a programming error named here."""
    kind = getattr(entry, "settings", None)
    if kind is None:
        if given is not None:
            raise UsageError(f"{flag} takes no settings, got {type(given).__name__}")
        return None
    if given is None:
        return kind()
    if not isinstance(given, kind):
        raise UsageError(f"{flag} settings must be {kind.__name__}, got {type(given).__name__}")
    return given


def allocation_settings(config: PruneConfig):
    """The allocator's settings, with --criterion and --seed filled in where they take part (scan, search)."""
    settings = settings_for(allocate.ALLOCATORS.get(config.allocation), config.allocation_settings,
                            f"--allocation {config.allocation}")
    if settings is None:
        return None
    fields = {f.name for f in dataclasses.fields(settings)}
    shared = {k: v for k, v in (("criterion", config.criterion), ("seed", config.seed)) if k in fields}
    try:
        return dataclasses.replace(settings, **shared)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


DATA_NEEDS = ("sensitivity", "search")  # what an allocator can need that evaluates the model on --data


class LatencyBench:
    """The latency budget's measurements for one model: the dense model exported and measured on the runtime, its
    latency model, and candidate plans exported and timed interleaved with it. Use as a context manager (it holds a
    scratch directory for the candidates' ONNX files).

    With ``config.quantize`` and a latency budget the deployed artifact is the INT8 model, so each candidate is
    quantised (onnxruntime, calibrated on one batch of ``data.train``: latency depends on the graph, not on the
    scales) and the INT8 candidate is timed against the dense fp32 model. The latency model's fp32 predictions are
    scaled by the dense model's measured INT8/fp32 ratio (``int8_factor``); the fit corrects the rest by measurement."""

    def __init__(self, loaded: LoadedModel, config: PruneConfig, analysis, timings: dict, data=None) -> None:
        import tempfile

        from .export import export_onnx
        from .latency import runtime_for, statistics
        from .latency_model import build_latency_model

        self.loaded, self.config, self.settings = loaded, config, config.latency_settings
        # checked before any export or measurement: the INT8 candidates need data to calibrate on
        self.int8 = _LatencyQuantizer(config, data) if config.quantize and config.latency else None
        self.runtime = self.settings.runtime()
        self._tmp = tempfile.TemporaryDirectory(prefix="prunecli-latency-")
        self.dir = Path(self._tmp.name)
        t0 = time.perf_counter()
        self.exporter = export_onnx(loaded.model, loaded.example_input, self.dir / "dense.onnx", config.opset)
        self.measuring = runtime_for(self.runtime)
        self.dense = self.measuring.open("dense", self.dir / "dense.onnx", self.runtime, tuple(loaded.input_shape))
        passes = []
        for _ in range(3):  # the lowest of three passes: a slow spell of the machine would skew the calibration
            self.measuring.clear(self.dense)
            self.measuring.measure([self.dense], 20)
            passes.append(statistics(self.dense.samples_ms, self.dense.batch)[f"{self.settings.stat}_ms"])
        self.dense_ms = min(passes)
        self.measuring.clear(self.dense)
        self.batch = self.dense.batch
        timings["latency_dense_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.model = build_latency_model(loaded.model, loaded.example_input, analysis.groups, self.runtime,
                                         self.dense_ms, self.batch)
        self.groups = analysis.groups
        self.measured = 0
        timings["latency_table_s"] = time.perf_counter() - t0
        self.int8_factor = 1.0
        if self.int8 is not None:
            t0 = time.perf_counter()
            try:
                self.int8_factor = self._ratio(self.dir / "dense.onnx").ratio
            except BaseException:
                self.close()
                raise
            timings["latency_int8_dense_s"] = time.perf_counter() - t0

    def __enter__(self) -> "LatencyBench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the dense model's session; remove the scratch directory of the dense and candidate ONNX files."""
        if self.measuring.alive():
            self.measuring.drop(self.dense)
        self._tmp.cleanup()

    def target(self) -> tuple[float, str]:
        """The latency target in its own unit: (fraction of dense, "of dense") or (ms, "ms")."""
        budget = self.config.latency
        return (budget.value, "ms") if budget.absolute else (budget.value, "of dense")

    def _ratio(self, fp32: Path):
        """The Ratio of the artifact made from ``fp32`` (itself, or its INT8 model) to the dense fp32 model."""
        path = fp32
        if self.int8 is not None:
            path = fp32.with_name(fp32.stem + ".int8.onnx")
            self.int8(fp32, path)
        candidate = self.measuring.open("candidate", path, self.runtime, tuple(self.loaded.input_shape))
        try:
            return self.measuring.ratio(candidate, self.dense, self.settings.stat, halfwidth=self.settings.halfwidth)
        finally:
            self.measuring.drop(candidate)
            if path != fp32:
                path.unlink(missing_ok=True)

    def predict_ms(self, counts: dict) -> float:
        """The latency model's prediction for the artifact measured (INT8: scaled by ``int8_factor``)."""
        return self.model.predict(counts) * self.int8_factor

    def predict(self, counts: dict) -> float:
        ms = self.predict_ms(counts)
        return ms if self.config.latency is None or self.config.latency.absolute else ms / self.dense_ms

    def measure(self, counts: dict):
        """(value, 95% high, Ratio) of the model pruned to ``counts`` (first channels kept: latency depends on
        shapes only), exported with the dense model's exporter and timed interleaved with it."""
        from .export import export_onnx

        plan = Plan(tuple(GroupPlan(g.root, g.channels, first_kept(g.channels, counts[g.root], g.channel_groups, g.block))
                          for g in self.groups),
                    "structure", "latency")
        path = self.dir / f"candidate{self.measured}.onnx"
        export_onnx(shrink_copy(self.loaded, plan), self.loaded.example_input, path, self.config.opset,
                    exporter=self.exporter)
        self.measured += 1
        try:
            ratio = self._ratio(path)
        finally:
            path.unlink()
        if self.config.latency is not None and self.config.latency.absolute:
            return ratio.model_ms, ratio.model_ms * ratio.high / ratio.ratio, ratio
        return ratio.ratio, ratio.high, ratio


class _LatencyQuantizer:
    """fp32 ONNX -> INT8 ONNX as `prune --quantize int8` makes it (same types, QDQ, per-channel), calibrated on one
    training batch with min-max: only for timing."""

    def __init__(self, config: PruneConfig, data) -> None:
        import dataclasses

        from .quantize import int8_types

        if data is None:
            raise UsageError("--latency with --quantize int8 times the INT8 model, which is calibrated on data: "
                             "pass --data SPEC")
        self.loader, self.types = data.train, int8_types(reduce_range=config.quantize.reduce_range)
        self.config = dataclasses.replace(config.quantize, calibration="minmax", calibration_batches=1)

    def __call__(self, fp32: Path, out: Path) -> None:
        from .quantize import quantize_file

        quantize_file(fp32, out, self.loader, self.config, self.types)


def staircase_round_to(loaded: LoadedModel, config: PruneConfig) -> tuple[int, str | None]:
    """--round-to for a latency-aware prune that did not give one: the preset's, raised to a multiple of the
    runtime's measured channel block (a count off the block costs as much as the next multiple, or more)."""
    import math

    from .latency_model import Table

    preset = loaded.preset.round_to if loaded.preset else 1
    block = Table(config.latency_settings.runtime()).staircase().block
    chosen = preset * block // math.gcd(preset, block)
    if chosen == preset:
        return preset, None
    return chosen, (f"--round-to {chosen}: the preset's {preset} raised to a multiple of the runtime's measured "
                    f"channel block {block} (see `prunecli inspect --latency`)")


def _fit_with_latency(bench: LatencyBench, analysis, order, targets, oracle, dense, config, hint, prefer, timings):
    """The budget fit when a latency budget is given: FLOPs/params first (exactly, as without one); if that plan is
    also fast enough it stands, else the latency fit on measured latency over the order's prefixes, from the least
    prefix the FLOPs/params budgets allow."""
    from .latency_fit import Probe, fit_latency

    target, unit = bench.target()
    settings = bench.settings
    t_min, fit = 0, None
    if targets:
        fit = fit_budget(analysis.groups, order, targets, oracle, dense, tolerance=config.tolerance, hint=hint,
                         prefer=prefer)
        value, high, ratio = bench.measure(fit.counts)
        probe = Probe(-1, bench.predict(fit.counts), value, high, ratio)
        if value <= target * (1 - settings.margin) and high <= target:
            return fit, {"binding": "counts", "probe": probe, "probes": [probe], "target": target, "unit": unit}
        lo, hi = 0, len(order)
        while lo < hi:  # the least prefix meeting the FLOPs/params budgets
            mid = (lo + hi) // 2
            cost = oracle(counts_after(analysis.groups, order, mid))
            if all(cost[m] <= t for m, t in targets.items()):
                hi = mid
            else:
                lo = mid + 1
        t_min = lo
    def neighbours(counts):  # one step more or less of one group, within its range and the other budgets
        out = []
        for g in analysis.groups:
            for delta in (g.step, -g.step):
                k = counts[g.root] + delta
                if g.min_keep <= k <= g.channels:
                    trial = {**counts, g.root: k}
                    if not targets or all(c <= targets[m] for m, c in oracle(trial).items() if m in targets):
                        out.append(trial)
        return out

    result = fit_latency(lambda t: counts_after(analysis.groups, order, t), len(order), target, bench.predict,
                         bench.measure, t_min=t_min, margin=settings.margin, window=settings.window, unit=unit,
                         neighbours=neighbours, unreachable_hint=(
                             f" (this is the INT8 model: the dense one measures {bench.int8_factor:.3g} of dense fp32, and "
                             "INT8 latency need not fall with channels; without --quantize the fp32 model may reach it)"
                             if bench.int8 is not None else ""))
    counts = result.counts
    from .budget import Fit

    fit = Fit(counts=counts, cost=oracle(counts), evaluations=oracle.evaluations)
    return fit, {"binding": "latency", "probe": result.probe, "probes": result.probes, "target": target, "unit": unit}


def _evidence(allocator, loaded: LoadedModel, config: PruneConfig, analysis, data, batches, progress, timings,
              placement=None) -> dict:
    """What a data-driven allocator declared it needs (``needs``), computed here so allocators stay pure."""
    needs = getattr(allocator, "needs", None)
    if needs is None or needs == "latency":  # the latency model is provided by plan_model's LatencyBench
        return {}
    if data is None:
        raise UsageError(f"--allocation {config.allocation} evaluates the model: pass --data SPEC (e.g. --data digits)")
    if needs == "sensitivity":
        from .sensitivity import cached_scan

        scan = cached_scan(loaded.model, loaded.example_input, analysis.groups, data.val, allocation_settings(config),
                           criterion_batches=batches, progress=progress, placement=placement)
        timings["sensitivity"] = {"scan_s": scan.wall_s, "cached": scan.cached, "key": scan.key}
        return {"sensitivity": scan}
    if needs == "search":
        from .allocate.learned import search

        metric = "flops" if config.flops is not None else "params"
        budget = config.flops if config.flops is not None else config.params
        target = budget.resolve(analysis.flops if metric == "flops" else analysis.params)
        search_config = allocation_settings(config)
        result = search(loaded.model, loaded.example_input, analysis.groups, data.train, metric, target, search_config,
                        progress=progress, placement=placement)
        timings["search_allocation_s"] = result.wall_s
        wanted = {g.root: result.alpha[g.root] * g.channels for g in analysis.groups}  # the fit's last gap follows these
        if search_config.weights == "dense":
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


def plan_model(loaded: LoadedModel, config: PruneConfig, timings: dict, batches=None, data=None, progress=None,
               placement=None):
    """Decide which channels go (a PlanResult). Never changes ``loaded``.

    ``data`` (Loaders) is needed by data-driven allocators (sensitivity); ``batches`` by data-driven criteria.
    """
    CRITERIA.get(config.criterion)  # unknown names fail before any work
    allocator = allocate.ALLOCATORS.get(config.allocation)
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
        order = allocator(analysis.groups, scores, config, evidence)
        scores = evidence.get("scores", scores)  # learned: keep the channels its search ranked highest

        t0 = time.perf_counter()
        hint = (f"with --round-to {round_to} and --min-channels {config.min_channels}"
                + (f" and --max-group-prune {config.max_group_prune}" if config.allocation in ("global", "latency") else "")
                + "; lower those (or drop --ignore patterns) to reach further")
        oracle = CostOracle(loaded.model, loaded.example_input, analysis.groups)
        with bounded("budget fit", config.timeout):
            if config.latency is not None:
                fit, evidence["latency"] = _fit_with_latency(bench, analysis, order, targets, oracle, dense, config, hint,
                                                             evidence.get("prefer"), timings)
                evidence["latency"]["model"] = bench.model.to_json()
                evidence["latency"]["predicted_ms"] = bench.predict_ms(fit.counts)
                evidence["latency"]["dense_ms"] = bench.dense_ms
                evidence["latency"]["int8_factor"] = bench.int8_factor if bench.int8 is not None else None
                evidence["latency"]["exporter"] = bench.exporter
            else:
                fit = fit_budget(analysis.groups, order, targets, oracle, dense, tolerance=config.tolerance, hint=hint,
                                 prefer=evidence.get("prefer"))
                if bench is not None:
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
        allocation=config.allocation,
    )
    source = loaded if "source_model" not in evidence else dataclasses.replace(loaded, model=evidence["source_model"])
    return PlanResult(plan, analysis, fit, dense, targets, round_to, source, evidence)


def shrink_copy(loaded: LoadedModel, plan: Plan, checks: list | None = None, timeout: float | None = None):
    """A physically pruned copy; the loaded model is left as it was. ``checks`` (if given) gets the result of
    checking the copy against the dense model (:func:`prunecli.shrink.check_against_dense`), which raises
    VerificationFailed (exit 3) when the pruning is wrong."""
    import torch

    from .shrink import check_against_dense, mis_pruned

    with bounded("shrink", timeout):
        pruned = copy.deepcopy(loaded.model)
        remove_channels_(pruned, loaded.example_input, plan.removed())
        pruned.eval()
        with torch.no_grad():
            before = loaded.model(loaded.example_input)
            try:
                after = pruned(loaded.example_input)
            except Exception as exc:  # noqa: BLE001 - the pruning broke the model: say which groups did it
                raise mis_pruned(loaded.model, loaded.example_input, plan.removed(),
                                 f"the pruned model fails to run ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if tuple(before.shape) != tuple(after.shape):
            raise RuntimeFailure(f"pruning changed the output shape {tuple(before.shape)} -> {tuple(after.shape)}")
        if checks is not None:
            checks.append(check_against_dense(loaded.model, pruned, loaded.example_input, plan.removed()))
    return pruned
