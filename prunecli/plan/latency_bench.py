"""The latency budget's measurements during planning: the dense model exported and timed, its latency model, and
candidate plans exported (INT8 when that is what will be deployed) and timed interleaved with it; and the fit on
measured latency (:mod:`prunecli.plan.latency_fit`) over an allocator's removal order."""

from __future__ import annotations

import time
from pathlib import Path

from prunecli.artifacts.load import LoadedModel
from prunecli.core.errors import UsageError
from prunecli.graph.plans import GroupPlan, Plan, first_kept
from prunecli.graph.shrink import shrink_copy
from prunecli.plan.budget import Fit, counts_after, fit_budget
from prunecli.plan.config import PlanConfig
from prunecli.plan.latency_fit import Probe, fit_latency


FIT_MAX_SECONDS = 30.0  # the most one candidate is timed in one measuring process (its interval then says how sure)


def plan_key(counts: dict) -> tuple:
    return tuple(sorted(counts.items()))


class LatencyBench:
    """The latency budget's measurements for one model: the dense model exported and measured on the runtime, its
    latency model, and candidate plans exported and timed interleaved with it. Use as a context manager (it holds a
    scratch directory for the candidates' ONNX files).

    With ``config.quantize`` and a latency budget the deployed artifact is the INT8 model, so each candidate is
    quantised (onnxruntime, calibrated on one batch of ``data.train``: latency depends on the graph, not on the
    scales) and the INT8 candidate is timed against the dense fp32 model. The latency model's fp32 predictions are
    scaled by the dense model's measured INT8/fp32 ratio (``int8_factor``); the fit corrects the rest by measurement."""

    def __init__(self, loaded: LoadedModel, config: PlanConfig, analysis, timings: dict, data=None) -> None:
        import tempfile

        from prunecli.runtime.export import export_onnx
        from prunecli.runtime.latency_model import build_latency_model
        from prunecli.runtime.timing import fresh_runtime_for, runtime_for, settled_ms

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
        self.dense_ms = settled_ms(self.measuring, self.dense, self.settings.stat)
        self.batch = self.dense.batch
        timings["latency_dense_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.model = build_latency_model(loaded.model, loaded.example_input, analysis.groups, self.runtime,
                                         self.dense_ms, self.batch)
        self.groups = analysis.groups
        self.measured = 0
        # plans accepted on the median of processes -> their artifact's graph_signature: the final check reuses that
        # measurement when the bundle's model has the same graph (prunecli.pipeline.prune)
        self.signatures: dict = {}
        if self.model.table.measured:  # layer models were timed in this process: the candidates get a fresh one
            self.measuring.drop(self.dense)
            self.measuring = fresh_runtime_for(self.runtime)
            self.dense = self.measuring.open("dense", self.dir / "dense.onnx", self.runtime, tuple(loaded.input_shape))
        timings["latency_table_s"] = time.perf_counter() - t0
        self.int8_factor = 1.0
        if self.int8 is not None:
            t0 = time.perf_counter()
            try:
                self.int8_factor = self._ratio(self.dir / "dense.onnx")[0].ratio
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

    def window(self) -> tuple[float, float]:
        """Where the fit accepts a plan, in the target's unit: at least ``1 - window`` and at most ``1 - margin`` of
        the target (as :func:`prunecli.plan.latency_fit.fit_latency` judges it)."""
        target, settings = self.config.latency.value, self.settings
        return target * (1 - settings.window), target * (1 - settings.margin)

    def _ratio(self, fp32: Path, confirm=None, verdict=None):
        """(Ratio, graph signature or None) of the artifact made from ``fp32`` (itself, or its INT8 model) to the
        dense fp32 model; the signature when the ratio is a median of processes. When
        ``confirm(ratio)`` says the measurement would be accepted, it is confirmed in fresh measuring processes and
        the median of three is returned (:func:`prunecli.runtime.timing.median_of_processes`: when the first fresh
        one gives the same ``verdict``, the third cannot change the median's, and is not measured)."""
        from prunecli.runtime.export import graph_signature
        from prunecli.runtime.timing import median_of_processes

        path = fp32
        if self.int8 is not None:
            path = fp32.with_name(fp32.stem + ".int8.onnx")
            self.int8(fp32, path)
        candidate = self.measuring.open("candidate", path, self.runtime, tuple(self.loaded.input_shape))
        budget, settings = self.config.latency, self.settings
        # a fraction target: a candidate is measured only until its verdict is clear - its interval wholly outside
        # the acceptance window (too slow or too fast), wholly inside [window's lower end, target] (the lower end
        # within one halfwidth: the precision a +-halfwidth interval gives an estimate there), or its value
        # outside the window with an interval of +-2 halfwidths (a search step needs no more)
        early = {"max_seconds": FIT_MAX_SECONDS}
        if budget is not None and not budget.absolute and fp32 != self.dir / "dense.onnx":
            lower, upper = self.window()
            early.update(outside=[lower, upper], inside=[lower * (1 - settings.halfwidth), budget.value],
                         coarse=2 * settings.halfwidth)
        try:
            ratio = self.measuring.ratio(candidate, self.dense, settings.stat, halfwidth=settings.halfwidth, **early)
            if confirm is None or not confirm(ratio):
                return ratio, None
            ratio = median_of_processes(ratio, path, self.dir / "dense.onnx", self.runtime,
                                        tuple(self.loaded.input_shape), settings.stat, settings.halfwidth,
                                        verdict=verdict, **early)
            return ratio, graph_signature(path)
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
        from prunecli.runtime.export import export_onnx

        plan = Plan(tuple(GroupPlan(g.root, g.channels, first_kept(g.channels, counts[g.root], g.channel_groups, g.block))
                          for g in self.groups),
                    "structure", "latency")
        path = self.dir / f"candidate{self.measured}.onnx"
        export_onnx(shrink_copy(self.loaded, plan), self.loaded.example_input, path, self.config.opset,
                    exporter=self.exporter)
        self.measured += 1
        budget = self.config.latency

        def in_units(ratio):  # (value, 95% high) in the target's unit
            if budget is not None and budget.absolute:
                return ratio.model_ms, ratio.model_ms * ratio.high / ratio.ratio
            return ratio.ratio, ratio.high

        def verdict(ratio) -> tuple:  # the fit's acceptance, as threshold comparisons (median_of_processes)
            (value, high), (lower, upper) = in_units(ratio), self.window()
            return value < lower, value > upper, high > budget.value

        def acceptable(ratio) -> bool:
            return not any(verdict(ratio))

        try:
            ratio, signature = self._ratio(path, confirm=acceptable if budget is not None else None, verdict=verdict)
        finally:
            path.unlink()
        if signature is not None:
            self.signatures[plan_key(counts)] = signature
        return (*in_units(ratio), ratio)


class _LatencyQuantizer:
    """fp32 ONNX -> INT8 ONNX as `prune --quantize int8` makes it (same types, QDQ, per-channel), calibrated on one
    training batch with min-max: only for timing."""

    def __init__(self, config: PlanConfig, data) -> None:
        import dataclasses

        from prunecli.runtime.quantize import int8_types

        if data is None:
            raise UsageError("--latency with --quantize int8 times the INT8 model, which is calibrated on data: "
                             "pass --data SPEC")
        self.loader, self.types = data.train, int8_types(reduce_range=config.quantize.reduce_range)
        self.config = dataclasses.replace(config.quantize, calibration="minmax", calibration_batches=1)

    def __call__(self, fp32: Path, out: Path) -> None:
        from prunecli.runtime.quantize import quantize_file

        quantize_file(fp32, out, self.loader, self.config, self.types)


def staircase_round_to(loaded: LoadedModel, config: PlanConfig) -> tuple[int, str | None]:
    """--round-to for a latency-aware prune that did not give one: the preset's, raised to a multiple of the
    runtime's measured channel block (a count off the block costs as much as the next multiple, or more)."""
    import math

    from prunecli.runtime.latency_model import Table

    preset = loaded.preset.round_to if loaded.preset else 1
    block = Table(config.latency_settings.runtime()).staircase().block
    chosen = preset * block // math.gcd(preset, block)
    if chosen == preset:
        return preset, None
    return chosen, (f"--round-to {chosen}: the preset's {preset} raised to a multiple of the runtime's measured "
                    f"channel block {block} (see `prunecli inspect --latency`)")


def fit_with_latency(bench: LatencyBench, analysis, order, targets, oracle, dense, config, hint, prefer, timings):
    """The budget fit when a latency budget is given: FLOPs/params first (exactly, as without one); if that plan is
    also fast enough it stands, else the latency fit on measured latency over the order's prefixes, from the least
    prefix the FLOPs/params budgets allow."""
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
    fit = Fit(counts=counts, cost=oracle(counts), evaluations=oracle.evaluations)
    return fit, {"binding": "latency", "probe": result.probe, "probes": result.probes, "target": target, "unit": unit}
