"""`prunecli inspect`: what in MODEL can be pruned."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from prunecli.cli.configs import latency_settings
from prunecli.cli.options import (
    ArchOpt,
    JsonOpt,
    ModelArg,
    PresetOpt,
    PruneHeadsOpt,
    ShapeOpt,
    TrustOpt,
    WeightsOpt,
    console,
    load,
    typed_inputs,
)


def inspect(
    model: str = ModelArg,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    ignore: List[str] = typer.Option([], "--ignore", help="Module name glob to keep intact (repeatable)."),
    round_to: Optional[int] = typer.Option(None, "--round-to", min=1, help="Kept channels are multiples of N (default: preset's)."),
    min_channels: int = typer.Option(1, "--min-channels", min=1, help="Fewest channels any group keeps."),
    prune_heads: bool = PruneHeadsOpt,
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds the graph stage may take (0: no bound)."),
    latency: bool = typer.Option(False, "--latency", help="Measure the latency model on the runtime: per-group "
                                 "latency share and the runtime's channel blocks."),
    plot: Optional[str] = typer.Option(None, "--plot", help="With --latency: write a PNG of latency against kept "
                                       "channels for the heaviest groups."),
    provider: str = typer.Option("cpu", "--provider", help="With --latency: cpu, cuda or tensorrt."),
    threads: Optional[int] = typer.Option(None, "--threads", help="With --latency: intra-op threads (default: physical cores)."),
    latency_batch: Optional[int] = typer.Option(None, "--latency-batch", help="With --latency: batch (default: the input shape's)."),
    as_json: bool = JsonOpt,
) -> None:
    """Show what in MODEL can be pruned: totals, channel groups, what is kept and why, and how far a budget can go.

    Examples:

        prunecli inspect torchvision:resnet18

        prunecli inspect torchvision:mobilenet_v2 --latency --plot latency.png

        prunecli inspect model.pt --json

        prunecli inspect weights.safetensors --arch torchvision:mobilenet_v2 --input-shape 1,3,160,160
    """
    from pathlib import Path

    from prunecli.core.errors import UsageError
    from prunecli.pipeline.inspection import inspect_model

    if plot is not None and not latency:
        raise UsageError("--plot draws the latency model: add --latency")
    import math

    if not (math.isfinite(timeout) and timeout >= 0):
        raise UsageError(f"--timeout {timeout} must be seconds >= 0 (0: no bound)")
    if plot is not None:
        from prunecli.core.outputs import check_out_file

        check_out_file(Path(plot), force=False, flag="--plot", inputs=typed_inputs(model, weights, arch), suffix=".png")
    settings = latency_settings(provider, threads, latency_batch, "p50")
    loaded = load(model, arch, weights, trust_pickle, input_shape, preset)
    from prunecli.core.deadline import bounded

    with bounded("graph", timeout):
        doc = inspect_model(loaded, ignore=tuple(ignore), round_to=round_to, min_channels=min_channels,
                            prune_heads=prune_heads)
    if latency:
        from prunecli.pipeline.inspection import latency_document
        from prunecli.plan.constraints import prunable_groups

        analysis, _ = prunable_groups(loaded, ignore=tuple(ignore), round_to=round_to, min_channels=min_channels,
                                      prune_heads=prune_heads)
        doc["latency"] = latency_document(loaded, analysis, settings)
        if plot is not None:
            from prunecli.pipeline.plots import plot_latency

            plot_latency(doc, Path(plot))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        from prunecli.cli.render import render_inspect, render_latency

        render_inspect(console(), doc)
        if latency:
            render_latency(console(), doc)
