"""`prunecli demo`: the whole job on digits."""

from __future__ import annotations

import json
from typing import Optional

import typer

from prunecli.cli.options import JsonOpt, console, progress_bars


def demo(
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default: a fresh prunecli-demo-DATE-TIME)."),
    flops: float = typer.Option(0.5, "--flops", help="FLOPs budget as a fraction of dense."),
    epochs: int = typer.Option(15, "--epochs", help="Fine-tuning epochs after pruning."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the whole job on real data that ships offline (scikit-learn's digits), in a few minutes on a CPU.

    Trains a small CIFAR-style ResNet (cached, so a second run skips it), prunes it to --flops, fine-tunes
    with distillation, exports and verifies ONNX, benches dense vs pruned, and prints the summary.

    Examples:

        prunecli demo

        prunecli demo --flops 0.25 --out demo-025/ --json
    """
    from pathlib import Path

    from prunecli.pipeline.demo import check_demo_flags, run_demo

    check_demo_flags(Path(out) if out else None, flops=flops, epochs=epochs)
    with progress_bars(enabled=not as_json) as progress:
        summary = run_demo(Path(out) if out else None, flops=flops, epochs=epochs, progress=progress)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        from prunecli.cli.render import render_demo

        render_demo(console(), summary)
