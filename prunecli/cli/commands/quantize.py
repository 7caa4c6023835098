"""`prunecli quantize`: onnxruntime static INT8 with an accuracy guard."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from prunecli.cli.configs import data_loaders, quantize_config
from prunecli.cli.options import (
    ArchOpt,
    CalibrationBatchesOpt,
    CalibrationOpt,
    JsonOpt,
    MaxQuantDropOpt,
    PresetOpt,
    ReduceRangeOpt,
    RequireInt8Opt,
    ShapeOpt,
    TrustOpt,
    WeightsOpt,
    typed_inputs,
)


def quantize(
    model: str = typer.Argument(..., metavar="MODEL", help="A prunecli bundle, an .onnx file, or any MODEL spec (exported first)."),
    data: str = typer.Option(..., "--data", help="Data spec: calibration on its training split, the guard on validation, the report on test."),
    out: str = typer.Option(..., "--out", help="Output directory: model.int8.onnx and quantize.json."),
    calibration: str = CalibrationOpt,
    calibration_batches: int = CalibrationBatchesOpt,
    max_quant_drop: float = MaxQuantDropOpt,
    require_int8: bool = RequireInt8Opt,
    reduce_range: str = ReduceRangeOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Batch size for calibration and evaluation."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data splits."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """INT8 with onnxruntime (QDQ, per-channel weights, calibrated on --data), judged through onnxruntime.

    The integer types follow this CPU (reduce_range without VNNI; --reduce-range on/off sets it for the CPU the model
    will be deployed on). INT8 is kept only if it loses at most --max-quant-drop top-1 points on validation,
    otherwise fp32 is kept and a warning says so (exit 1 with --require-int8).

    Examples:

        prunecli quantize pruned/ --data imagefolder:./data --out int8/

        prunecli quantize pruned/model.onnx --data digits --out int8/ --calibration entropy --require-int8
    """
    import tempfile
    from pathlib import Path

    from prunecli.artifacts.bundle import INT8_ONNX
    from prunecli.artifacts.resolve import fp32_onnx
    from prunecli.core.errors import UsageError
    from prunecli.core.outputs import atomic_dir, check_out_dir
    from prunecli.runtime.quantize import run_quantize

    config = quantize_config("int8", data, calibration, calibration_batches, max_quant_drop, require_int8,
                              reduce_range)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be at least 1")
    check_out_dir(Path(out), force, inputs=typed_inputs(model, weights, arch))
    with tempfile.TemporaryDirectory(prefix="prunecli-quantize-") as tmp:
        fp32, loaded = fp32_onnx(model, Path(tmp), dict(arch=arch, weights=weights, trust_pickle=trust_pickle,
                                                        input_shape=input_shape, preset=preset))
        loaders = data_loaders(data, batch_size, 0, loaded, seed)
        with atomic_dir(Path(out), force) as staged:
            doc = run_quantize(fp32, staged / INT8_ONNX, loaders, config)
            doc["source"] = {"model": model, "data": data}
            (staged / "quantize.json").write_text(json.dumps(doc, indent=2))
    acc, guard = doc["accuracy"], doc["guard"]
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(f"INT8 ({doc['types']['activation']}/{doc['types']['weight']}, reduce_range "
                   f"{doc['types']['reduce_range']}): {acc['split']} top-1 {acc['int8_top1']:.2f} vs fp32 "
                   f"{acc['fp32_top1']:.2f}, agreement {acc['agreement']:.2f}%; written to {out}")
    if doc["kept"] == "fp32":
        sys.stderr.write(f"warning: INT8 lost {guard['drop_points']:.2f} top-1 points on {guard['split']} (more than "
                         f"--max-quant-drop {max_quant_drop:g}); fp32 kept, no {INT8_ONNX} written\n")
        if require_int8:
            raise typer.Exit(1)
