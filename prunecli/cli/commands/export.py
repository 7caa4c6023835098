"""`prunecli export`: MODEL to verified ONNX."""

from __future__ import annotations

import json
from typing import Optional

import typer

from prunecli.cli.options import (
    ArchOpt,
    JsonOpt,
    ModelArg,
    PresetOpt,
    ShapeOpt,
    TrustOpt,
    WeightsOpt,
    load,
    typed_inputs,
)


def export(
    model: str = ModelArg,
    out: str = typer.Option(..., "--out", help="Output .onnx path."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Export MODEL to ONNX (dynamic batch), run the full onnx checker and compare onnxruntime with PyTorch.

    Examples:

        prunecli export pruned/ --out pruned.onnx

        prunecli export torchvision:resnet18 --out dense.onnx --opset 18
    """
    from pathlib import Path

    from prunecli.core.errors import UsageError
    from prunecli.core.outputs import check_out_file
    from prunecli.runtime.export import run_export

    inputs = typed_inputs(model, weights, arch)
    check_out_file(Path(out), force, inputs=inputs, suffix=".onnx")
    if not 7 <= opset <= 23:
        raise UsageError(f"--opset {opset} must be between 7 and 23 (18 is the default)")
    loaded = load(model, arch, weights, trust_pickle, input_shape, preset)
    info = run_export(loaded, Path(out), opset=opset, force=force, inputs=inputs)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        where = ("weights inside: the file stands alone" if info["self_contained"]
                 else f"weights over 2 GB in {info['files'][1]}: copy both files together")
        typer.echo(f"wrote {info['file']} ({where}): onnxruntime vs PyTorch max abs diff {info['max_abs_diff']:.2e} "
                   f"(opset {opset}, batches {', '.join(map(str, info['per_batch']))})")
