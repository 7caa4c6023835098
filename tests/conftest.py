"""Shared fixtures: an isolated home/cache per test and a CLI runner returning (code, stdout, stderr)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each (children inherit it)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "_home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("TORCH_HOME", str(home / ".torch"))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, stderr={self.stderr!r}, stdout={self.stdout[-500:]!r})"


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from prunecli.cli.app import app

    runner = CliRunner()

    def run(*args: str) -> CliResult:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _stand_in_ms(onnx_bytes: bytes, shape) -> float:
    """A deterministic machine for one-node layer models: weight bytes x output positions (plus a call overhead)."""
    import math

    spatial = math.prod(shape[2:]) if len(shape) > 2 else 1
    return 0.005 + len(onnx_bytes) * spatial * 2e-9


@pytest.fixture(params=["stand-in", pytest.param("measured", marks=pytest.mark.slow)])
def layer_timing(request, monkeypatch):
    """The latency model's layer tables and staircase probe timed on a deterministic stand-in (fast suite) or on the
    real runtime (slow suite: the same assertions). Whole models are always timed for real."""
    if request.param == "stand-in":
        def time_many(models, runtime, **_):
            return [_stand_in_ms(data, shape) for data, shape in models]

        monkeypatch.setattr("prunecli.runtime.latency_model.measure.time_many", time_many)
        monkeypatch.setattr("prunecli.runtime.latency_model.table.time_many", time_many)
    return request.param


def _weight_cost(path) -> float:
    """A stand-in machine's latency of an ONNX file: the multiply-adds of its convolutions and matrix products (from
    onnx shape inference), each costing 0.4 of an fp32 one in a QDQ model (so INT8 is 2.5x faster)."""
    import numpy as np
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    int8 = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    cost = 0.0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            weight, out = shapes[node.input[1]], shapes[node.output[0]]
            cost += float(np.prod(weight)) * (float(np.prod(out[2:])) if node.op_type == "Conv" else 1.0)
    return cost * (0.4 if int8 else 1.0)


@pytest.fixture
def weight_cost_machine(monkeypatch):
    """Every latency ratio prunecli measures comes from :func:`_weight_cost` of the two files (deterministic), and
    the files measured are recorded."""
    from prunecli.runtime.timing import Ratio, Runtime

    measured = []

    def ratio(self, model, baseline, stat="p50", **_):
        import onnx

        m, b = _weight_cost(model.path), _weight_cost(baseline.path)
        measured.append(any(n.op_type == "QuantizeLinear" for n in onnx.load(str(model.path)).graph.node))
        model.samples_ms[:], baseline.samples_ms[:] = [m] * 20, [b] * 20
        return Ratio(stat, m / b, m / b * 0.998, m / b * 1.002, m, b, 20)

    monkeypatch.setattr(Runtime, "ratio", ratio)
    return measured
