"""A model against its dense original on the runtime: the one way prunecli times a pair after pruning.

The dense model is exported with the pruned one's exporter and both are timed interleaved in one measuring process
(:mod:`prunecli.runtime.timing`), so the ratio compares like with like; the final check of a latency budget, the
report's short measurement and INT8's latency against dense all use it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prunecli.runtime.export import export_onnx
from prunecli.runtime.ratio import Ratio
from prunecli.runtime.timing import (
    RuntimeConfig,
    cpu_model,
    median_of_processes,
    physical_cores,
    runtime_for,
    statistics,
)


def latency_ratio(dense_model, pruned_onnx: Path, example_input, input_shape, opset: int, exporter: str,
                  settings, halfwidth: float | None = None, verdict=None) -> dict:
    """Dense vs pruned on the runtime, interleaved in one process; the dense model goes through the same exporter
    as the pruned one, so the ratio compares like with like. Without a latency budget a short measurement (the
    report's ``latency``); with one, until the ratio's 95% interval is within +-``halfwidth``, decided on the median
    of three measuring processes (``verdict``: see :func:`prunecli.runtime.timing.median_of_processes`)."""
    runtime = RuntimeConfig(settings.provider, settings.threads, settings.batch, warmup=5)
    with tempfile.TemporaryDirectory(prefix="prunecli-dense-") as tmp:
        dense_onnx = Path(tmp) / "dense.onnx"
        export_onnx(dense_model, example_input, dense_onnx, opset, exporter=exporter)
        measuring = runtime_for(runtime)
        pruned = measuring.open("model", pruned_onnx, runtime, tuple(input_shape))
        dense = measuring.open("baseline", dense_onnx, runtime, tuple(input_shape))
        try:
            if halfwidth is None:
                ratio = measuring.ratio(pruned, dense, settings.stat, halfwidth=1.0, block=5, min_runs=20, max_runs=20)
            else:  # the budget's final check: the median of this and two fresh measuring processes
                ratio = measuring.ratio(pruned, dense, settings.stat, halfwidth=halfwidth)
                ratio = median_of_processes(ratio, Path(pruned_onnx), dense_onnx, runtime, tuple(input_shape),
                                            settings.stat, 2 * halfwidth, verdict=verdict)
        finally:
            measuring.drop(pruned, dense)
    p, d = statistics(pruned.samples_ms, pruned.batch), statistics(dense.samples_ms, dense.batch)
    doc = ratio_report(ratio, pruned.provider, settings.threads or physical_cores(), pruned.batch, settings.stat,
                       "the latency budget's final measurement" if halfwidth is not None
                       else "short measurement during prune; use `prunecli bench` for a gate")
    # the deployment's p50 from the samples of the (first) process, and the mean
    doc.update(runs=len(pruned.samples_ms), dense_p50_ms=d["p50_ms"], pruned_p50_ms=p["p50_ms"],
               ratio_p50=p["p50_ms"] / d["p50_ms"], ratio_mean=p["mean_ms"] / d["mean_ms"])
    return doc


def ratio_to_baseline(model_onnx: Path, baseline_onnx: Path, settings, input_shape, *, halfwidth: float = 0.02,
                      max_seconds: float = 20.0) -> dict:
    """``model_onnx`` against an already exported ``baseline_onnx`` (e.g. `prunecli compare`'s dense.onnx), timed
    interleaved in the shared measuring process until the ratio's 95% interval is within +-``halfwidth`` or
    ``max_seconds`` have passed (the interval then says how sure it is): the same settings for every model compared.
    report.json's ``latency`` layout (:func:`ratio_report`)."""
    runtime = RuntimeConfig(settings.provider, settings.threads, settings.batch, warmup=5)
    measuring = runtime_for(runtime)
    model = measuring.open("model", Path(model_onnx), runtime, tuple(input_shape))
    baseline = measuring.open("baseline", Path(baseline_onnx), runtime, tuple(input_shape))
    try:
        ratio = measuring.ratio(model, baseline, settings.stat, halfwidth=halfwidth, max_seconds=max_seconds)
    finally:
        measuring.drop(model, baseline)
    return ratio_report(ratio, model.provider, settings.threads or physical_cores(), model.batch, settings.stat,
                        f"interleaved with the baseline until +-{halfwidth:.0%} or {max_seconds:g} s")


def ratio_report(ratio: Ratio, provider: str, threads: int, batch: int, stat: str, note: str) -> dict:
    """report.json ``latency`` from a measured Ratio (its p50 from ``others``)."""
    p50 = ratio.others.get("p50", {})
    return {
        "provider": provider, "threads": threads, "cpu": cpu_model(), "runs": ratio.runs, "batch": batch, "stat": stat,
        "dense_p50_ms": p50.get("baseline_ms"), "pruned_p50_ms": p50.get("model_ms"), "ratio_p50": p50.get("ratio"),
        "ratio_mean": None,
        "ratio": ratio.ratio, "ci95": [ratio.low, ratio.high], "dense_ms": ratio.baseline_ms, "pruned_ms": ratio.model_ms,
        "spread": ratio.spread, "disagreement": ratio.disagreement, "noise": ratio.noise,
        "reported": {k: v for k, v in ratio.others.items() if k != "processes"},
        "processes": ratio.others.get("processes"), "note": note,
    }
