"""`prunecli bench`: latency gates on onnxruntime."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer

from prunecli.cli.options import (
    ArchOpt,
    JsonOpt,
    PresetOpt,
    ShapeOpt,
    TrustOpt,
    WeightsOpt,
    console,
)


def bench(
    model: str = typer.Argument(..., metavar="MODEL", help="An .onnx file, a prunecli bundle, or any MODEL spec (exported on the fly)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Model to compare against, timed interleaved in the same process."),
    provider: str = typer.Option("cpu", "--provider", help="cpu, cuda or tensorrt; exit 4 if it is not the one actually used."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads (default: physical cores)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size (default: the input shape's)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs per model first."),
    runs: int = typer.Option(100, "--runs", help="Timed runs per model."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this long even if --runs are not done."),
    stat: str = typer.Option("p50", "--stat", help="Statistic the gates judge: p50, p90, p99 or mean."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Gate: the model's --stat latency."),
    max_latency_ratio: Optional[float] = typer.Option(None, "--max-latency-ratio", help="Gate: model/baseline --stat ratio."),
    junit_xml: Optional[str] = typer.Option(None, "--junit-xml", help="Write one JUnit testcase per constraint here."),
    input_shape: Optional[str] = ShapeOpt,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure onnxruntime latency of MODEL (against --baseline) and gate it: exit 1 when a budget is missed.

    Appends a markdown table to $GITHUB_STEP_SUMMARY when that variable is set.

    Examples:

        prunecli bench pruned/model.onnx --baseline dense.onnx --max-latency-ratio 0.6

        prunecli bench pruned/ --max-latency-ms 5 --stat p90 --junit-xml bench.xml

        prunecli bench torchvision:resnet18 --batch 8 --threads 2 --json
    """
    import tempfile
    from pathlib import Path

    from prunecli.artifacts.resolve import resolve_onnx
    from prunecli.cli._errors import usage
    from prunecli.core.errors import UsageError
    from prunecli.runtime.bench import NOISE_WINDOW, BenchConfig, markdown_summary, run_bench
    from prunecli.runtime.bench import junit_xml as to_junit

    with usage():
        config = BenchConfig(provider=provider, threads=threads, batch=batch, warmup=warmup, runs=runs,
                             seconds=seconds, stat=stat, max_latency_ms=max_latency_ms,
                             max_latency_ratio=max_latency_ratio)
    if max_latency_ratio is not None and baseline is None:
        raise UsageError("--max-latency-ratio needs --baseline MODEL to compare against")
    from prunecli.artifacts.load import parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape else None
    load_kwargs = dict(arch=arch, weights=weights, trust_pickle=trust_pickle, input_shape=shape, preset=preset)
    with tempfile.TemporaryDirectory(prefix="prunecli-bench-") as tmp:
        model_path, model_shape = resolve_onnx(model, Path(tmp), load_kwargs)
        base_path = None
        if baseline is not None:
            base_path, _ = resolve_onnx(baseline, Path(tmp), {**load_kwargs, "arch": None, "weights": None}, "--baseline")
        doc = run_bench(model_path, base_path, config, shape or model_shape)
    if junit_xml:
        Path(junit_xml).write_text(to_junit(doc))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(markdown_summary(doc))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        from prunecli.cli.render import render_bench

        render_bench(console(), doc)
    for c in doc["constraints"]:
        if c.get("noisy"):
            from prunecli.cli.render import noise_warning

            sys.stderr.write(noise_warning(c["name"], c, NOISE_WINDOW, "a busy machine, or runs too short to time "
                                           "steadily", f"measure alone, or gate with a margin of at least "
                                           f"{c['noise']:.0%}"))
    missed = [c for c in doc["constraints"] if not c["passed"]]
    if missed:
        for c in missed:
            sys.stderr.write(f"budget not met: {c['name']}: measured {c['measured']:.4g}\n")
        raise typer.Exit(1)
