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


# protobuf cannot serialise one message over 2 GiB: above this, weights go to ``<file>.onnx.data``
EXTERNAL_DATA_BYTES = 2**31 - 2**26


def external_data_name(path: Path) -> str:
    """The side file holding the weights of an ONNX model too large to hold them itself."""
    return Path(path).name + ".data"


def _weights_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _to_proto(model, example_input, opset: int):
    """(ModelProto, exporter): the dynamo exporter first, TorchScript's when it fails; nothing touches disk."""
    import torch

    errors = []
    for dynamo in (True, False):
        try:
            kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset, dynamo=dynamo)
            with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                if dynamo:
                    program = torch.onnx.export(model, (example_input,), None, verbose=False,
                                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                                **kwargs)
                    return program.model_proto, "dynamo"
                import onnx

                buffer = io.BytesIO()
                torch.onnx.export(model, (example_input,), buffer,
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **kwargs)
                return onnx.load_model_from_string(buffer.getvalue()), "torchscript"
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
    raise RuntimeFailure(f"ONNX export failed ({'; '.join(errors)})")


def export_onnx(model, example_input, path: Path, opset: int = 18) -> str:
    """Write ``path``: an ONNX model with a dynamic batch axis and its weights inside, or, when the weights
    exceed protobuf's 2 GiB, beside it in ``<name>.data`` (the only side file ever written). Returns which
    exporter produced it. ``path`` should be in a staging location (see :func:`run_export`)."""
    import onnx

    model = model.eval()
    proto, exporter = _to_proto(model, example_input, opset)
    large = _weights_bytes(model) > EXTERNAL_DATA_BYTES
    path = Path(path)
    if large:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external_data_name(path), size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return exporter


def run_export(loaded, out: Path, *, opset: int = 18, force: bool = False, inputs=()) -> dict:
    """Export ``loaded`` to ``out`` (an .onnx path) with the same checks as `prune`.

    Staged in a hidden sibling directory under the final file name (so external data, if any, is named
    after ``out``), verified, then moved into place; nothing is left beside ``out`` on error or Ctrl-C.
    """
    import os

    from .cost import count_macs
    from .outputs import apply_umask, check_out_file, staging_dir

    out = Path(out)
    check_out_file(out, force, inputs=inputs, suffix=".onnx")
    side = out.with_name(external_data_name(out))
    with staging_dir(out) as tmp:
        exporter = export_onnx(loaded.model, loaded.example_input, tmp / out.name, opset)
        check = verify_onnx(loaded.model, tmp / out.name, loaded.input_shape)
        for path in tmp.iterdir():
            apply_umask(path, directory=False)
        if (tmp / side.name).exists():
            os.replace(tmp / side.name, side)
        else:
            side.unlink(missing_ok=True)  # a stale side file of an earlier, larger export under --force
        os.replace(tmp / out.name, out)
    files = [str(out)] + ([str(side)] if side.exists() else [])
    return {"file": str(out), "files": files, "self_contained": len(files) == 1, "opset": opset, "exporter": exporter,
            "input_shape": list(loaded.input_shape), "macs": count_macs(loaded.model, loaded.example_input), **check}


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
