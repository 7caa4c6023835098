"""`prunecli bench`: gates and exit codes, JSON/JUnit/step-summary outputs, providers, and the CI examples."""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).parents[1] / "examples" / "ci"


@pytest.fixture(scope="module")
def resnet18_pair(tmp_path_factory):
    """resnet18 pruned to --flops 0.5 (224x224) and its dense ONNX, as the issue's command lines use them."""
    from typer.testing import CliRunner

    from prunecli.cli.app import app

    d = tmp_path_factory.mktemp("pair")
    runner = CliRunner()
    r = runner.invoke(app, ["prune", "torchvision:resnet18", "--flops", "0.5", "--no-latency", "--out", str(d / "o")])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["export", "torchvision:resnet18", "--out", str(d / "dense.onnx")])
    assert r.exit_code == 0, r.stderr
    return d


def test_ratio_gate_fails_and_passes(cli, resnet18_pair):
    d = resnet18_pair
    base = ["bench", d / "o" / "model.onnx", "--baseline", d / "dense.onnx", "--runs", "20", "--warmup", "3"]
    missed = cli(*base, "--max-latency-ratio", "0.2")
    assert missed.code == 1
    assert "model:" in missed.stdout and "baseline:" in missed.stdout and "ratio" in missed.stdout
    assert "p50 latency ratio <= 0.2" in missed.stderr
    assert cli(*base, "--max-latency-ratio", "1.5").code == 0


def test_json_junit_and_step_summary(cli, resnet18_pair, tmp_path, monkeypatch):
    d = resnet18_pair
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = cli("bench", d / "o" / "model.onnx", "--baseline", d / "dense.onnx", "--runs", "12", "--warmup", "2",
                 "--max-latency-ratio", "1.5", "--max-latency-ms", "0.0001", "--stat", "p90",
                 "--junit-xml", tmp_path / "bench.xml", "--json")
    assert result.code == 1  # the absolute budget is impossible
    doc = json.loads(result.stdout)
    for key in ("schema_version", "versions", "provider", "cpu", "threads", "ratio", "constraints", "passed"):
        assert key in doc, key
    assert doc["provider"] == "CPUExecutionProvider" and doc["threads"] >= 1 and doc["passed"] is False
    for label in ("model", "baseline"):
        assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "samples_ms"} <= set(doc[label])
        assert len(doc[label]["samples_ms"]) == 12
    assert set(doc["ratio"]) >= {"p50", "p90", "p99", "mean"}
    assert doc["ratio"]["p90"] == pytest.approx(doc["model"]["p90_ms"] / doc["baseline"]["p90_ms"])
    by_kind = {c["kind"]: c for c in doc["constraints"]}
    assert by_kind["max_latency_ratio"]["passed"] and not by_kind["max_latency_ms"]["passed"]
    assert by_kind["max_latency_ms"]["measured"] == doc["model"]["p90_ms"]

    suite = ET.parse(tmp_path / "bench.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 2 and suite.get("failures") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and "ms" in failed[0].get("name")

    text = summary.read_text()
    assert "| model" in text and "| ratio |" in text and "FAIL" in text


def test_cuda_provider_missing_exits_4(cli, resnet18_pair):
    result = cli("bench", resnet18_pair / "o" / "model.onnx", "--provider", "cuda", "--runs", "2")
    assert result.code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDAExecutionProvider" in lines[0]


@pytest.mark.parametrize("args,code,message", [
    (["--max-latency-ratio", "0.5"], 2, "--max-latency-ratio needs --baseline"),
    (["--stat", "p42"], 2, "--stat 'p42'"),
    (["--provider", "tpu"], 2, "--provider 'tpu'"),
    (["--runs", "0"], 2, "--runs 0"),
])
def test_bench_usage_errors(cli, resnet18_pair, args, code, message):
    result = cli("bench", resnet18_pair / "o" / "model.onnx", *args)
    assert result.code == code and message in result.stderr


def test_bench_accepts_bundle_and_spec(cli, tmp_path):
    assert cli("prune", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16", "--flops", "0.5",
               "--out", tmp_path / "b").code == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["latency"]["ratio_p50"] > 0 and report["latency"]["runs"] == 20
    result = cli("bench", tmp_path / "b", "--baseline", "tinynets:tiny_resnet", "--input-shape", "1,3,16,16",
                 "--runs", "5", "--warmup", "1", "--batch", "2", "--max-latency-ms", "1000", "--json")
    assert result.code == 0, result
    doc = json.loads(result.stdout)
    assert doc["model"]["batch"] == 2 and doc["model"]["input_shape"] == [2, 3, 16, 16] and doc["passed"]


def test_missing_onnx_file(cli, tmp_path):
    result = cli("bench", tmp_path / "nope.onnx")
    assert result.code == 2 and "not found" in result.stderr


def _commands(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    if "jobs" in doc:
        lines = [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    else:
        lines = [line for job in doc.values() if isinstance(job, dict) for line in job.get("script", [])]
    return [line for line in lines if line.startswith("prunecli ")]


def test_ci_examples_run(cli, tmp_path):
    github, gitlab = _commands(EXAMPLES / "github-actions.yml"), _commands(EXAMPLES / "gitlab-ci.yml")
    assert github == gitlab and len(github) == 3
    for line in github:
        args = shlex.split(line)[1:]
        result = cli(*args)
        if args[0] == "bench":
            assert result.code in (0, 1), result  # the gate's verdict depends on the machine
            assert ET.parse(tmp_path / "bench.xml").getroot().find("testcase") is not None
        else:
            assert result.code == 0, result
    import onnx

    gated = shlex.split(github[-1])[2]  # the gate is on the INT8 model the prune step wrote
    assert gated == "pruned/model.int8.onnx"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / gated)).graph.node)
