"""ONNX export, the full ONNX checker, and onnxruntime parity against PyTorch."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

from prunecli.core.errors import RuntimeFailure, VerificationFailed

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


# Tried in this order; the first whose file passes verification is kept (report.json ``onnx.exporter``).
# TorchScript's exporter is 3-5x faster on CNNs (benchmarks/results/export_time.md); the dynamo exporter
# covers what tracing cannot express, and whatever TorchScript's exporter gets wrong fails verification.
EXPORTERS = ("torchscript", "dynamo")


@contextlib.contextmanager
def _native_output_captured():
    """Send what C++ code writes to file descriptors 1 and 2 (TorchScript's exporter dumps whole graphs there when
    it fails) to a scratch file instead of the user's terminal; Python-level output likewise."""
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        fds = [sys.stdout.fileno(), sys.stderr.fileno()]
    except (AttributeError, OSError, io.UnsupportedOperation):  # captured streams (tests): Python level only
        fds = []
    with tempfile.TemporaryFile() as scratch:
        try:
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(scratch.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _to_proto(model, example_input, opset: int, exporter: str):
    """The ModelProto one exporter makes; nothing touches disk."""
    import onnx
    import torch

    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset)
    with _native_output_captured(), torch.no_grad():
        if exporter == "dynamo":
            if example_input.shape[0] == 1:  # torch.export specialises a size-1 dim to a constant: trace at batch 2
                example_input = torch.cat([example_input, example_input])
            program = torch.onnx.export(model, (example_input,), None, dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), **kwargs)
            return program.model_proto
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # its deprecation notice: prunecli chose it knowingly (EXPORTERS)
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example_input,), buffer, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **kwargs)
        return onnx.load_model_from_string(buffer.getvalue())


def _save(proto, path: Path, large: bool) -> None:
    import onnx

    if large:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external_data_name(path), size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def export_onnx(model, example_input, path: Path, opset: int = 18, exporter: str | None = None) -> str:
    """Write ``path`` without verifying it (see :func:`export_verified`): ONNX with a dynamic batch axis and its
    weights inside, or, when they exceed protobuf's 2 GiB, beside it in ``<name>.data`` (the only side file
    ever written). ``exporter`` picks one; None tries :data:`EXPORTERS` in order. Returns the one used."""
    model = model.eval()
    large = _weights_bytes(model) > EXTERNAL_DATA_BYTES
    errors = []
    for name in (exporter,) if exporter else EXPORTERS:
        try:
            _save(_to_proto(model, example_input, opset, name), Path(path), large)
            return name
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # try the next exporter, then report all
            errors.append(f"{name}: {_reason(exc)}")
    raise RuntimeFailure(f"ONNX export failed ({'; '.join(errors)})")


def export_verified(model, example_input, path: Path, opset: int, input_shape) -> tuple[str, dict]:
    """(exporter, verification) for the first exporter whose file passes :func:`verify_onnx`.

    Raises VerificationFailed (exit 3) when every export that succeeded failed verification, RuntimeFailure
    (exit 4) when no exporter could export at all.
    """
    errors, mismatch = [], None
    for name in EXPORTERS:
        try:
            export_onnx(model, example_input, path, opset, exporter=name)
        except RuntimeFailure as exc:
            errors.append(str(exc))
            continue
        try:
            return name, verify_onnx(model, path, input_shape)
        except VerificationFailed as exc:
            mismatch = exc
            errors.append(f"{name}: {exc}")
    if mismatch is not None:
        raise VerificationFailed(f"{mismatch} (every exporter: {'; '.join(errors)})") from mismatch
    raise RuntimeFailure(f"ONNX export failed ({'; '.join(errors)})")


def run_export(loaded, out: Path, *, opset: int = 18, force: bool = False, inputs=()) -> dict:
    """Export ``loaded`` to ``out`` (an .onnx path) with the same checks as `prune`.

    Staged in a hidden sibling directory under the final file name (so external data, if any, is named
    after ``out``), verified, then moved into place; nothing is left beside ``out`` on error or Ctrl-C.
    """
    import os

    from prunecli.core import interrupts
    from prunecli.core.outputs import apply_umask, check_out_file, staging_dir
    from prunecli.graph.cost import count_macs

    out = Path(out)
    check_out_file(out, force, inputs=inputs, suffix=".onnx")
    side = out.with_name(external_data_name(out))
    with staging_dir(out) as tmp:
        exporter, check = export_verified(loaded.model, loaded.example_input, tmp / out.name, opset, loaded.input_shape)
        for path in tmp.iterdir():
            apply_umask(path, directory=False)
        with interrupts.deferred():  # the side file and the model move together, or not at all
            if (tmp / side.name).exists():
                os.replace(tmp / side.name, side)
            else:
                side.unlink(missing_ok=True)  # a stale side file of an earlier, larger export under --force
            os.replace(tmp / out.name, out)
            interrupts.wrote(out)
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
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # an export onnxruntime cannot even load
        raise VerificationFailed(f"onnxruntime cannot load {path}: {_reason(exc)}") from exc
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    worst, per_batch, scale = 0.0, {}, 0.0
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape[1:], generator=generator)
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        try:
            got = session.run(None, {input_name: x.numpy()})[0]
        except Exception as exc:  # e.g. a batch size the exporter baked in
            raise VerificationFailed(f"{path}: onnxruntime fails at batch {batch}: {_reason(exc)}") from exc
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


def graph_signature(path: Path) -> str:
    """A digest of what an ONNX file's latency depends on and nothing else: every node's operator, domain and
    attributes (tensor-valued attributes by type and shape), the graph's inputs and outputs, and the initializers'
    types and shapes, not their values. Two files with the same signature run the same kernels on the same shapes
    (a pruned plan and the same plan with other kept channels, or fine-tuned weights, or other INT8 scales)."""
    import hashlib

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    digest = hashlib.sha256()

    def tensor(t) -> str:
        return f"T{t.data_type}{list(t.dims)}"

    def value_info(v) -> str:
        return str(v.type).replace("\n", " ")

    def graph(g) -> None:
        for v in list(g.input) + list(g.output):
            digest.update(f"io {value_info(v)};".encode())
        for t in g.initializer:
            digest.update(f"init {tensor(t)};".encode())
        for node in g.node:
            digest.update(f"node {node.domain}:{node.op_type} {len(node.input)}>{len(node.output)}".encode())
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    digest.update(f" {a.name}={tensor(a.t)}".encode())
                elif a.type == onnx.AttributeProto.GRAPH:
                    digest.update(f" {a.name}=graph(".encode())
                    graph(a.g)
                    digest.update(b")")
                else:
                    digest.update(f" {a.name}={onnx.helper.get_attribute_value(a)!r}".encode())
            digest.update(b";")

    graph(proto.graph)
    digest.update(f"opset {[(o.domain, o.version) for o in proto.opset_import]}".encode())
    return digest.hexdigest()
