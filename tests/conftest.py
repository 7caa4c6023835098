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
