"""ONNX export, the full ONNX checker, and onnxruntime parity against PyTorch."""

from __future__ import annotations

import io
import contextlib
from pathlib import Path

from .errors import RuntimeFailure, VerificationFailed

ATOL = 1e-4
RTOL = 1e-3
# Also required: max diff <= RELATIVE_TOL * max |output|. With near-zero outputs (some random inits
# give logits around 1e-10) the absolute test alone would pass any export.
RELATIVE_TOL = 1e-3


def export_onnx(model, example_input, path: Path, opset: int = 18) -> str:
    """Export with a dynamic batch axis; returns which exporter produced the file."""
    import torch

    model = model.eval()
    errors = []
    for dynamo in (True, False):
        try:
            kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset, dynamo=dynamo)
            if dynamo:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
                kwargs["verbose"] = False
            else:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
            with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                torch.onnx.export(model, (example_input,), str(path), **kwargs)
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
    raise RuntimeFailure(f"ONNX export failed ({'; '.join(errors)})")


def verify_onnx(model, path: Path, input_shape, batch_sizes=(1, 2), seed: int = 0) -> dict:
    """Full onnx.checker, then onnxruntime CPU vs PyTorch eval at each batch size.

    Raises VerificationFailed (exit 3) with the measured error when outputs differ beyond
    |a - b| <= ATOL + RTOL * |b|.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise VerificationFailed(f"onnx.checker rejected {path}: {str(exc).splitlines()[0]}") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    worst, per_batch, scale = 0.0, {}, 0.0
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape[1:], generator=generator)
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise VerificationFailed(f"{path}: onnxruntime output shape {got.shape} != PyTorch {expected.shape} at batch {batch}")
        diff = float(np.max(np.abs(got - expected)))
        per_batch[batch] = diff
        worst = max(worst, diff)
        out_scale = float(np.max(np.abs(expected)))
        scale = max(scale, out_scale)
        if not np.allclose(got, expected, atol=ATOL, rtol=RTOL) or (out_scale > 0 and diff > RELATIVE_TOL * out_scale):
            raise VerificationFailed(
                f"{path}: onnxruntime differs from PyTorch at batch {batch}: max abs diff {diff:.3g} "
                f"(allowed {ATOL:g} + {RTOL:g}*|x|, and at most {RELATIVE_TOL:g} of the output scale {out_scale:.3g})"
            )
    # The output scale makes a tiny diff meaningful: with near-zero outputs (some random inits) any
    # export would pass an absolute tolerance, so report the diff relative to the largest output too.
    return {"max_abs_diff": worst, "max_abs_output": scale, "relative_diff": worst / scale if scale else 0.0,
            "per_batch": per_batch, "atol": ATOL, "rtol": RTOL, "checker": "full",
            "provider": "CPUExecutionProvider"}
