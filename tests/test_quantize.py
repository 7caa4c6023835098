"""`prunecli quantize`: onnxruntime static INT8 (QDQ, per-channel), calibrated and judged on the user's data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import _weight_cost

TINY = "tinynets:tiny_resnet"
SMALL = ["--input-shape", "1,3,8,8", "--data", "digits"]


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory):
    """A tiny ResNet pruned and fine-tuned on digits, so that top-1 means something."""
    from typer.testing import CliRunner

    from prunecli.cli.app import app

    out = tmp_path_factory.mktemp("b") / "pruned"
    r = CliRunner().invoke(app, ["prune", TINY, *SMALL, "--flops", "0.5", "--epochs", "3", "--no-latency",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def test_a_bundle_quantises_and_the_int8_file_stands_alone(cli, trained_bundle, tmp_path):
    # a tiny model and a validation split of a few hundred images: one point is a handful of images, so the guard here allows 5 (the guard
    # itself is tested below)
    result = cli("quantize", trained_bundle, "--data", "digits", "--out", tmp_path / "q", "--max-quant-drop", "5",
                 "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kept"] == "int8" and sorted(p.name for p in (tmp_path / "q").iterdir()) == ["model.int8.onnx",
                                                                                            "quantize.json"]
    assert json.loads((tmp_path / "q" / "quantize.json").read_text())["accuracy"] == doc["accuracy"]
    acc = doc["accuracy"]
    assert acc["split"] == "test" and acc["fp32_top1"] > 50  # trained: far above chance (10%)
    assert abs(acc["int8_top1"] - acc["fp32_top1"]) <= 5 and acc["agreement"] >= 85
    assert doc["guard"]["passed"] and doc["guard"]["drop_points"] <= 5.0
    types = doc["types"]
    assert types["reason"] and types["activation"] == "QUInt8" and types["weight"] == "QInt8"

    import onnx
    import onnxruntime as ort

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "q" / "model.int8.onnx", alone / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(alone / "m.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised
    session = ort.InferenceSession(str(alone / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: np.random.rand(2, 3, 8, 8).astype("float32")})[0]
    assert logits.shape == (2, 10)
    assert (trained_bundle / "model.onnx").is_file()  # the input is untouched


def test_the_guard_keeps_fp32_when_int8_loses_too_much(cli, trained_bundle, tmp_path):
    """Forced to fail (no drop allowed below zero): fp32 is kept, a warning says so, no INT8 file; with
    --require-int8 the same is exit 1."""
    args = ("quantize", trained_bundle, "--data", "digits", "--max-quant-drop", "-100")
    kept = cli(*args, "--out", tmp_path / "a", "--json")
    assert kept.code == 0, kept.stderr
    assert json.loads(kept.stdout)["kept"] == "fp32"
    assert "fp32 kept" in kept.stderr and kept.stderr.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["quantize.json"]
    required = cli(*args, "--require-int8", "--out", tmp_path / "b")
    assert required.code == 1 and "fp32 kept" in required.stderr


def test_a_bare_onnx_file_quantises(cli, trained_bundle, tmp_path):
    single = tmp_path / "m.onnx"
    shutil.copy(trained_bundle / "model.onnx", single)
    result = cli("quantize", single, "--data", "digits", "--out", tmp_path / "q", "--calibration", "percentile",
                 "--calibration-batches", "2", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)  # nothing but the JSON on stdout: onnxruntime's calibrator prints are silenced
    assert doc["config"]["calibration"] == "percentile" and doc["config"]["calibration_batches"] == 2
    assert doc["kept"] in ("int8", "fp32") and doc["source"]["model"] == str(single)


@pytest.mark.parametrize("args, needle", [
    (["--calibration", "kl"], "--calibration"),
    (["--calibration-batches", "0"], "--calibration-batches"),
    (["--reduce-range", "sometimes"], "--reduce-range"),
])
def test_bad_settings_are_one_line_exit_2_before_work(cli, tmp_path, args, needle):
    result = cli("quantize", TINY, *SMALL, "--out", tmp_path / "q", *args)
    assert result.code == 2 and needle in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "q").exists()


def test_a_non_empty_out_is_refused_without_force(cli, tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "keep.txt").write_text("mine")
    result = cli("quantize", TINY, *SMALL, "--out", tmp_path / "q")
    assert result.code == 2 and "--force" in result.stderr
    assert (tmp_path / "q" / "keep.txt").read_text() == "mine"


def test_types_follow_the_instruction_set():
    from prunecli.runtime.quantize import int8_types

    vnni = int8_types({"avx2", "avx512bw", "avx512_vnni"})
    assert not vnni.reduce_range and "avx512_vnni" in vnni.isa
    plain = int8_types({"avx2", "fma"})
    assert plain.reduce_range and "saturate" in plain.reason
    assert not int8_types(set()).reduce_range
    # set for the deployment CPU: a VNNI build machine quantising for an AVX2-only fleet, and the reverse
    assert int8_types({"avx2", "avx512_vnni"}, "on").reduce_range and not int8_types({"avx2"}, "off").reduce_range
    assert "--reduce-range on" in int8_types({"avx2", "avx512_vnni"}, "on").reason


def _int8_weights(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]


@pytest.mark.parametrize("setting, bound", [("on", 64), ("off", 128)])
def test_reduce_range_reaches_the_weights(cli, trained_bundle, tmp_path, setting, bound):
    """--reduce-range on: 7-bit weights (|w| <= 64) whatever this CPU has; off: the full s8 range is used."""
    result = cli("quantize", trained_bundle, "--data", "digits", "--out", tmp_path / "q", "--reduce-range", setting,
                 "--max-quant-drop", "100", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["types"]["reduce_range"] is (setting == "on") and doc["config"]["reduce_range"] == setting
    weights = _int8_weights(tmp_path / "q" / "model.int8.onnx")
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= bound
    if setting == "off":
        assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) > 64


def test_prune_quantize_int8_adds_the_int8_model_to_the_bundle(cli, tmp_path):
    out = tmp_path / "b"
    result = cli("prune", TINY, *SMALL, "--flops", "0.5", "--epochs", "2", "--quantize", "int8", "--max-quant-drop",
                 "5", "--json", "--out", out)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    int8 = report["int8"]
    assert int8["kept"] == "int8" and (out / "model.int8.onnx").is_file() and (out / "model.onnx").is_file()
    assert int8["accuracy"]["agreement"] >= 85 and int8["guard"]["passed"]
    latency = int8["latency_vs_fp32"]
    assert latency["p50_ms"] > 0 and latency["fp32_p50_ms"] > 0 and latency["runs"] == 50
    versus_dense = int8["latency_vs_dense"]  # next to fp32 and dense: the short measurement the report makes
    assert versus_dense["ratio_p50"] > 0 and versus_dense["runs"] == 20 and versus_dense["dense_p50_ms"] > 0
    assert json.loads((out / "report.json").read_text())["int8"]["file"] == "model.int8.onnx"
    md = (out / "report.md").read_text()
    assert "## INT8" in md and "kept: model.int8.onnx" in md and f"agreement {int8['accuracy']['agreement']:.2f}%" in md
    from conftest import sha256

    import prunecli

    prunecli.load_bundle(out, arch=TINY)  # still a valid bundle with the extra file
    assert json.loads((out / "recipe.json").read_text())["files"]["model.int8.onnx"] == sha256(out / "model.int8.onnx")
    alone = tmp_path / "alone.onnx"
    shutil.copy(out / "model.int8.onnx", alone)
    data = bytearray((out / "model.int8.onnx").read_bytes())
    data[-20] ^= 0xFF  # a weight byte changed inside the bundle: the gate refuses it
    (out / "model.int8.onnx").write_bytes(bytes(data))
    edited = cli("bench", out / "model.int8.onnx", "--runs", "5")
    assert edited.code == 2 and "model.int8.onnx does not match the sha256" in edited.stderr
    assert cli("bench", alone, "--runs", "5").code == 0  # copied out of the bundle, it is a plain ONNX file


def test_prune_quantize_needs_data_and_require_int8_is_exit_1_without_a_bundle(cli, tmp_path):
    no_data = cli("prune", TINY, "--input-shape", "1,3,8,8", "--flops", "0.5", "--quantize", "int8",
                  "--out", tmp_path / "a")
    assert no_data.code == 2 and "--data" in no_data.stderr and no_data.stderr.count("\n") == 1
    assert not (tmp_path / "a").exists()
    required = cli("prune", TINY, *SMALL, "--flops", "0.5", "--no-latency", "--quantize", "int8",
                   "--max-quant-drop", "-100", "--require-int8", "--out", tmp_path / "b")
    assert required.code == 1 and "--require-int8" in required.stderr and required.stderr.count("\n") == 1
    assert not (tmp_path / "b").exists()
    fallback = cli("prune", TINY, *SMALL, "--flops", "0.5", "--no-latency", "--quantize", "int8",
                   "--max-quant-drop", "-100", "--out", tmp_path / "c", "--json")
    assert fallback.code == 0 and "fp32 only" in fallback.stderr
    assert json.loads(fallback.stdout)["int8"]["kept"] == "fp32" and not (tmp_path / "c" / "model.int8.onnx").exists()


def test_latency_with_quantize_int8_is_met_on_the_quantised_model(cli, weight_cost_machine, tmp_path, layer_timing):
    """--latency with --quantize int8: the fit times INT8 candidates and the final INT8 model; on a machine where
    INT8 is 2.5x faster, 0.3 of dense is met by a model whose fp32 version is far above it."""
    out = tmp_path / "b"
    r = cli("prune", "tinynets:tiny_vgg:width=32", "--input-shape", "1,3,32,32", "--data", "digits", "--threads", "2",
            "--latency", "0.3", "--round-to", "2", "--quantize", "int8", "--max-quant-drop", "100", "--json",
            "--out", out)
    assert r.code == 0, r
    report = json.loads(r.stdout)
    lat = report["budget"]["latency"]
    assert lat["artifact"] == "model.int8.onnx" and report["latency"]["model"] == "model.int8.onnx"
    assert lat["met"] and lat["within_window"] and lat["binding"] == "latency"
    dense = tmp_path / "dense.onnx"
    assert cli("export", "tinynets:tiny_vgg:width=32", "--input-shape", "1,3,32,32", "--out", dense).code == 0
    int8, fp32 = _weight_cost(out / "model.int8.onnx"), _weight_cost(out / "model.onnx")
    assert lat["measured"] == pytest.approx(int8 / _weight_cost(dense), rel=1e-6)
    assert 0.3 * 0.95 <= lat["measured"] <= 0.3
    assert report["int8"]["latency_vs_dense"]["ratio_p50"] == pytest.approx(lat["measured"])
    assert fp32 / _weight_cost(dense) > 0.5  # the fp32 model of the same plan is far from the target: INT8 was timed
    assert 0.35 < lat["int8_factor"] < 0.5  # the dense INT8/fp32 ratio scaled the latency model's predictions
    assert weight_cost_machine and all(weight_cost_machine)  # every file timed against dense was an INT8 model
    recipe = json.loads((out / "recipe.json").read_text())
    from conftest import sha256

    assert recipe["files"]["model.int8.onnx"] == sha256(out / "model.int8.onnx")


def test_latency_missed_because_the_guard_kept_fp32_is_exit_1_naming_it(cli, weight_cost_machine, tmp_path, layer_timing):
    """The fit met 0.3 with INT8, but the guard (forced to fail) keeps fp32: the deployed model is measured, misses,
    and the line says why and what to change."""
    out = tmp_path / "b"
    r = cli("prune", "tinynets:tiny_vgg:width=32", "--input-shape", "1,3,32,32", "--data", "digits", "--threads", "2",
            "--latency", "0.3", "--round-to", "2", "--quantize", "int8", "--max-quant-drop", "-100", "--json",
            "--out", out)
    assert r.code == 1, r
    assert r.stderr.count("\n") == 1 and "(model.onnx (INT8 was not kept" in r.stderr and "--max-quant-drop" in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["latency"]["artifact"] == "model.onnx" and not report["budget"]["latency"]["met"]
    assert not (out / "model.int8.onnx").exists()
