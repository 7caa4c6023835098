"""INT8: onnxruntime's static quantisation of an exported model, calibrated on the user's data and judged on it.

The work is onnxruntime's (``onnxruntime.quantization``): ``quant_pre_process`` (shape inference and graph
optimisation), then ``quantize_static`` in QDQ format with per-channel weights, calibrated on the first
``calibration_batches`` batches of the training split. prunecli chooses the integer types from the CPU it runs on,
evaluates the INT8 model *through onnxruntime* against the fp32 one (top-1 on validation for the guard, top-1 and
agreement on test for the report), and keeps fp32 when INT8 costs more than ``max_drop`` points on validation.

Types (:func:`int8_types`): onnxruntime's x86 INT8 kernels multiply u8 activations by s8 weights. With VNNI
(``avx512_vnni``/``avx_vnni``) the products accumulate in int32 directly; without it, AVX2/AVX-512 pair them with
``vpmaddubsw``, whose int16 intermediate can saturate - onnxruntime's documentation recommends ``reduce_range``
(7-bit weights) there. The choice and its reason are recorded.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from prunecli.core.errors import RuntimeFailure

CALIBRATIONS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeConfig:
    """INT8 after pruning (:mod:`prunecli.runtime.quantize`): onnxruntime's calibration method and batches, and the guard
    (fp32 is kept when INT8 loses more than ``max_drop`` top-1 points on validation; ``require``: exit 1 instead).
    With a latency budget the fit measures the quantised model: the artifact that will be deployed."""

    calibration: str = "minmax"
    calibration_batches: int = 8
    max_drop: float = 1.0  # points of top-1 on the validation split
    require: bool = False  # exit 1 instead of falling back to fp32
    reduce_range: str = "auto"  # auto: from this CPU's instruction set; on/off: for the CPU the model will run on

    def __post_init__(self) -> None:
        if self.reduce_range not in ("auto", "on", "off"):
            raise ValueError(f"--reduce-range {self.reduce_range!r} is not one of auto, on, off")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"--calibration {self.calibration!r} is not one of {', '.join(CALIBRATIONS)}")
        if self.calibration_batches < 1:
            raise ValueError(f"--calibration-batches {self.calibration_batches} must be at least 1")


@dataclass(frozen=True)
class Int8Types:
    activation: str  # onnxruntime QuantType name
    weight: str
    reduce_range: bool
    isa: str
    reason: str


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def int8_types(flags: set[str] | None = None, reduce_range: str = "auto") -> Int8Types:
    """u8 activations and s8 weights; ``reduce_range`` from the instruction set (``auto``: of this CPU, read from
    /proc/cpuinfo unless ``flags`` are given) or as the user set it for the CPU the model will be deployed on."""
    flags = cpu_flags() if flags is None else flags
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if reduce_range != "auto":
        here = ", ".join(vnni) or ", ".join(sorted(flags & {"avx512bw", "avx2"})) or platform.machine() or "unknown"
        return Int8Types("QUInt8", "QInt8", reduce_range == "on", here,
                         f"--reduce-range {reduce_range}: set for the deployment CPU (this one has {here}); 7-bit "
                         "weights avoid int16 saturation on x86 without VNNI")
    if vnni:
        return Int8Types("QUInt8", "QInt8", False, ", ".join(vnni),
                         "VNNI: u8 x s8 products accumulate in int32 without saturating, so full-range weights")
    wide = sorted(flags & {"avx512bw", "avx2"})
    if wide:
        return Int8Types("QUInt8", "QInt8", True, ", ".join(wide),
                         "no VNNI: AVX2/AVX-512 pair u8 x s8 products in int16 (vpmaddubsw), which can saturate; "
                         "reduce_range (7-bit weights) as onnxruntime recommends")
    return Int8Types("QUInt8", "QInt8", False, platform.machine() or "unknown",
                     "no x86 SIMD flags found: onnxruntime's default u8 activations, s8 weights")


class _Calibration:
    """onnxruntime's CalibrationDataReader over the first ``batches`` batches of a loader."""

    def __init__(self, loader, input_name: str, batches: int) -> None:
        self._batches = []
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            self._batches.append({input_name: x.numpy().astype("float32")})
        self._it = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_file(fp32: Path, out: Path, loader, config: QuantizeConfig, types: Int8Types) -> None:
    """Write the INT8 model of ``fp32`` to ``out`` (weights inside: the file stands alone)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    reader = _Calibration(loader, input_name, config.calibration_batches)
    if not len(reader):
        raise RuntimeFailure("the training split gave no batch to calibrate on; check --data")
    with tempfile.TemporaryDirectory(prefix="prunecli-int8-", dir=out.parent) as tmp:
        prepared, written = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                _quantize(fp32, prepared, written, reader, config, types)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantiser: report it in one line
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise RuntimeFailure(f"onnxruntime could not quantise {fp32.name} ({type(exc).__name__}: {detail})") from exc
        model = onnx.load(str(written))  # external data (if any) folded in: the INT8 file must stand alone
        onnx.save(model, str(written))
        os.replace(written, out)


def _quantize(fp32: Path, prepared: Path, written: Path, reader, config: QuantizeConfig, types: Int8Types) -> None:
    """onnxruntime's two steps (its calibrators print progress, which the caller silences)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(written), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=types.reduce_range, activation_type=getattr(QuantType, types.activation),
                    weight_type=getattr(QuantType, types.weight), calibrate_method=method,
                    extra_options={"CalibTensorRangeSymmetric": False})


def predictions(path: Path, loader, max_batches: int | None = None):
    """(argmax per example, labels) of an ONNX model over ``loader``, through onnxruntime on the CPU."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    preds, labels = [], []
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = session.run(None, {name: x.numpy().astype("float32")})[0]
        preds.append(np.argmax(logits, axis=1))
        labels.append(y.numpy())
    return np.concatenate(preds), np.concatenate(labels)


def _top1(pred, labels) -> float:
    return float((pred == labels).mean() * 100.0)


def run_quantize(fp32: Path, out_file: Path, loaders, config: QuantizeConfig, types: Int8Types | None = None) -> dict:
    """Quantise ``fp32`` to ``out_file`` and judge it: the guard on validation, the report on test (or validation
    when there is no test split). When the guard fails, ``out_file`` is removed and the doc says fp32 is kept."""
    types = types or int8_types(reduce_range=config.reduce_range)
    quantize_file(fp32, out_file, loaders.train, config, types)
    guard_split = loaders.val if loaders.val is not None else loaders.test
    fp_val, labels_val = predictions(fp32, guard_split)
    q_val, _ = predictions(out_file, guard_split)
    drop = _top1(fp_val, labels_val) - _top1(q_val, labels_val)
    report_split = "test" if loaders.test is not None else "val"
    report_loader = loaders.test if loaders.test is not None else guard_split
    fp_test, labels_test = predictions(fp32, report_loader)
    q_test, _ = predictions(out_file, report_loader)
    kept = "int8" if drop <= config.max_drop else "fp32"
    if kept == "fp32":
        out_file.unlink(missing_ok=True)
    return {
        "kept": kept,
        "file": out_file.name if kept == "int8" else None,
        "config": asdict(config),
        "types": asdict(types),
        "format": "QDQ, per-channel weights (onnxruntime.quantization.quantize_static after quant_pre_process)",
        "guard": {"split": "val" if loaders.val is not None else "test", "fp32_top1": _top1(fp_val, labels_val),
                  "int8_top1": _top1(q_val, labels_val), "drop_points": drop, "max_drop_points": config.max_drop,
                  "passed": kept == "int8"},
        "accuracy": {"split": report_split, "fp32_top1": _top1(fp_test, labels_test),
                     "int8_top1": _top1(q_test, labels_test),
                     "agreement": float((fp_test == q_test).mean() * 100.0)},
    }
