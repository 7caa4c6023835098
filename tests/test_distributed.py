"""Devices, mixed precision and multi-process fine-tuning through torchrun (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
# digits: 1,294 training images (an even split over 2 ranks, and the last global batch of 14 is 7 + 7), 144
# validation and 359 test images (odd: a padded sampler would count one twice)
RUN = ["tinynets:tiny_plain:num_classes=10", "--input-shape", "1,3,16,16", "--data", "digits", "--flops", "0.4",
       "--epochs", "2", "--no-latency", "--json"]
needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour on a machine without CUDA")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    return {**env, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}


def _torchrun(tmp_path, *args, timeout=150, **kwargs):
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "prunecli", "prune", *map(str, args)]
    result = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0 and "(SIGABRT)" in result.stderr and not _errors(result.stderr):
        # gloo has aborted a process at start-up here (once in ~20 launches, "terminate called without an active
        # exception", before prunecli ran): one more launch, so that the test judges prunecli, not that flake
        result = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=timeout, **kwargs)
    return result


def _single(tmp_path, *args, timeout=150):
    cmd = [sys.executable, "-m", "prunecli", "prune", *map(str, args)]
    return subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def _errors(stderr: str) -> list[str]:
    """prunecli's lines (torchrun adds its own warnings and summary)."""
    return [line for line in stderr.splitlines() if line.startswith("error:") or line.startswith("rank ")]


def _last_weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")


def test_two_processes_train_as_one_process_with_the_global_batch(tmp_path):
    multi = _torchrun(tmp_path, *RUN, "--batch-size", "8", "--out", tmp_path / "multi")
    assert multi.returncode == 0, multi.stderr
    single = _single(tmp_path, *RUN, "--batch-size", "16", "--out", tmp_path / "single")
    assert single.returncode == 0, single.stderr
    # one bundle, written once (rank 0), nothing else beside it
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["multi", "single"]
    assert {"model.onnx", "model.safetensors", "recipe.json", "report.json"} <= {p.name for p in (tmp_path / "multi").iterdir()}
    report = json.loads(multi.stdout)
    assert json.loads((tmp_path / "multi" / "report.json").read_text())["training"] == report["training"]
    training = report["training"]
    assert training["world_size"] == 2 and training["backend"] == "gloo" and training["batch_per_process"] == 8
    assert training["ranks_identical"] is True and len(training["weights_sha256"]) == 64
    assert training["train_images"] == 2 * 1294 and training["images_per_s"] > 0
    assert report["config"]["device"]["device"] == "cpu" and report["config"]["world_size"] == 2
    # every test and validation sample counted once: 359 and 144 on 2 ranks, not 360
    assert report["accuracy"]["split"] == "test"
    for key in ("dense", "pruned", "finetuned"):
        assert report["accuracy"][key]["samples"] == 359
    assert all(h["val"]["samples"] == 144 for h in report["history"])
    # the same samples per global step, the gradients averaged: the same training within float rounding
    reference = json.loads(single.stdout)
    a, b = _last_weights(tmp_path / "multi"), _last_weights(tmp_path / "single")
    assert torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    for m, s in zip(report["history"], reference["history"]):
        assert m["val"]["loss"] == pytest.approx(s["val"]["loss"], abs=1e-5)
        assert m["train_loss"] == pytest.approx(s["train_loss"], abs=1e-5)
    assert report["accuracy"]["finetuned"]["loss"] == pytest.approx(reference["accuracy"]["finetuned"]["loss"], abs=1e-5)
    # and training moved the weights (the comparison above is not between two untouched copies)
    assert report["history"][0]["val"]["loss"] != report["history"][1]["val"]["loss"]


CTRL_C_ARGS = ["tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--data", "synthetic:800", "--flops", "0.4",
               "--epochs", "25", "--batch-size", "8", "--no-latency"]


def _interrupted_torchrun(tmp_path, args):
    """A torchrun group interrupted (SIGINT to every process, as Ctrl-C in a terminal) once its first checkpoint is
    written. Returns the checkpoint's epoch, after checking that every rank stopped cleanly and left nothing."""
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "prunecli", "prune", *args, "--out",
           str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: every process of the group gets it
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = _errors(err)
    assert len(lines) == 1 and "--resume" in lines[0] and "is kept" in lines[0], err
    assert not (tmp_path / "run" / "report.json").exists()  # no bundle from a stopped group
    assert not list((tmp_path / "run").rglob("*.tmp"))
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < 25
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no process of the group is left
    return done


def test_ctrl_c_stops_every_rank(tmp_path):
    _interrupted_torchrun(tmp_path, CTRL_C_ARGS)


@pytest.mark.slow  # fast: test_ctrl_c_stops_every_rank, and test_finetune's single-process resume-is-exact test
def test_ctrl_c_stops_every_rank_and_resume_continues_exactly(tmp_path):
    args = CTRL_C_ARGS
    done = _interrupted_torchrun(tmp_path, args)
    resumed = _torchrun(tmp_path, *args, "--out", tmp_path / "run", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert len(report["history"]) == 25 and report["history"][done]["epoch"] == done + 1
    straight = _torchrun(tmp_path, *args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    a, b = _last_weights(tmp_path / "run"), _last_weights(tmp_path / "straight")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0  # resumed = never interrupted


@pytest.mark.parametrize("extra, message", [
    pytest.param(["--schedule", "agp"], "--schedule agp runs in one process", marks=pytest.mark.slow),
    pytest.param(["--sync-bn"], "--sync-bn needs GPUs", marks=pytest.mark.slow),
    # after the group formed: rank 0 fails while planning, rank 1 (waiting for the plan) loses its peer and
    # keeps quiet; the one line is rank 0's (fast: test_ctrl_c_stops_every_rank and
    # test_ranks_with_different_weights_are_a_failed_check, one line from a formed group)
    pytest.param(["--flops", "0.01"], "is not reachable", marks=pytest.mark.slow),
])
def test_torchrun_refusals_are_one_line(tmp_path, extra, message):
    if "--sync-bn" in extra and torch.cuda.is_available():
        pytest.skip("SyncBatchNorm runs on this machine's GPUs")
    result = _torchrun(tmp_path, *RUN, "--out", tmp_path / "o", *extra)
    assert result.returncode != 0
    lines = _errors(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def _rank_check_worker(rank: int, port: int, outdir: str, differ: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from prunecli.core.distributed import World
    from prunecli.core.errors import VerificationFailed
    from prunecli.train.finetune import _rank_check

    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank if differ else 0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model[1].running_mean.fill_(float(rank))  # buffers differ on every rank: rank 0's are taken, not a fault
    try:
        result = _rank_check(model, World(rank, 2, "gloo"))
        Path(outdir, f"{rank}.json").write_text(json.dumps(result))
    except VerificationFailed as exc:
        Path(outdir, f"{rank}.json").write_text(json.dumps({"error": str(exc)}))
    dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_ranks_with_different_weights_are_a_failed_check(tmp_path, differ):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_check_worker, args=(port, str(tmp_path), differ), nprocs=2)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    if differ:
        assert all("different weights" in r["error"] for r in results)
    else:
        assert all(r["ranks_identical"] for r in results) and results[0]["weights_sha256"] == results[1]["weights_sha256"]


# ---------------------------------------------------------------- devices and AMP (one process)
SMALL_RUN = ["tinynets:tiny_plain", "--input-shape", "1,3,16,16", "--data", "synthetic:64", "--flops", "0.4",
             "--epochs", "1", "--batch-size", "16", "--no-latency", "--json"]


@needs_cpu_only
def test_device_cpu_and_auto_are_the_same_here(cli, tmp_path):
    runs = {}
    for device in ("cpu", "auto"):
        result = cli("prune", *SMALL_RUN, "--device", device, "--out", tmp_path / device)
        assert result.code == 0, result.stderr
        runs[device] = json.loads(result.stdout)
        assert runs[device]["config"]["device"]["device"] == "cpu"
    assert runs["cpu"]["history"] == runs["auto"]["history"]
    assert (tmp_path / "cpu" / "model.safetensors").read_bytes() == (tmp_path / "auto" / "model.safetensors").read_bytes()


@needs_cpu_only
@pytest.mark.parametrize("flags, message", [
    (["--device", "cuda"], "--device cuda: no CUDA device is available here"),
    (["--device", "cuda:1"], "--device cuda:1: no CUDA device is available here"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--amp", "fp8"], "--amp 'fp8' is not one of off, bf16, fp16"),
    (["--amp", "fp16"], "--amp fp16 needs a GPU"),
    (["--sync-bn"], "--sync-bn synchronises BatchNorm across torchrun processes"),
])
def test_device_refusals_exit_2_with_one_line(cli, tmp_path, flags, message):
    result = cli("prune", *SMALL_RUN, "--out", tmp_path / "o", *flags)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


def test_amp_bf16_trains_on_the_cpu(cli, tmp_path):
    result = cli("prune", *SMALL_RUN, "--device", "cpu", "--amp", "bf16", "--out", tmp_path / "o")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["training"]["amp"] == "bf16" and report["config"]["device"]["amp"] == "bf16"
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in report["history"])
    # the weights stay fp32: the bundle and ONNX are the same kind of artefact as without AMP
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "o" / "model.safetensors").values()} <= {torch.float32, torch.int64}
    assert report["onnx"]["max_abs_diff"] < 1e-3


# ---------------------------------------------------------------- data loading
def test_imagefolder_evaluation_matches_torchvisions_preset():
    import numpy as np
    from PIL import Image
    from torchvision.transforms._presets import ImageClassification

    from prunecli.train.data import _image_transforms, eval_resize

    rng = np.random.default_rng(0)
    preset = ImageClassification(crop_size=224, resize_size=256)
    ours = _image_transforms((1, 3, 224, 224), train=False, crop_pct=0.875)
    assert eval_resize((1, 3, 224, 224), 0.875) == 256
    for shape in ((300, 400, 3), (512, 260, 3), (256, 256, 3)):
        image = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))
        expected, got = preset(image), ours(image)
        assert got.shape == expected.shape == (3, 224, 224)
        assert float((got - expected).abs().max()) < 1e-5


def test_loader_workers_default_to_what_the_machine_has(monkeypatch):
    from prunecli.train.data import DataConfig, available_cpus, loader_workers

    assert loader_workers(DataConfig("digits"), decodes=False) == 0  # tensors in memory: nothing to decode
    assert loader_workers(DataConfig("x"), decodes=True) == max(1, min(8, available_cpus()))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * available_cpus()))
    assert loader_workers(DataConfig("x"), decodes=True) == 1  # shared among the processes on this machine
    assert loader_workers(DataConfig("x", workers=3), decodes=True) == 3


@pytest.mark.parametrize("extra, message", [
    (["--schedule", "agp"], "--schedule agp runs in one process; under torchrun use --schedule oneshot"),
    (["--sync-bn"], "--sync-bn needs GPUs"),
    (["--epochs", "0"], "under torchrun prunecli fine-tunes in parallel"),
])
def test_torchrun_placements_are_refused_before_any_work(cli, tmp_path, monkeypatch, extra, message):
    """The refusals a torchrun rank makes before it joins the group, in-process (torchrun's own variable set): one
    line, exit 2, nothing written. The torchrun runs of the same flags are in the slow suite."""
    if "--sync-bn" in extra and torch.cuda.is_available():
        pytest.skip("SyncBatchNorm runs on this machine's GPUs")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = cli("prune", *RUN[:-1], "--out", tmp_path / "o", *extra)
    assert result.code == 2, result
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_compare_under_torchrun_trains_every_point_on_both_ranks(tmp_path):
    """`torchrun ... -m prunecli compare`: every point is a two-process prune (world size 2 in its report), rank 0
    alone writes one line per point, and a rerun resumes on both ranks (nothing left to train)."""
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "prunecli", "compare", RUN[0], "--input-shape",
           "1,3,16,16", "--data", "digits", "--methods", "uniform:l1,global:l1", "--budgets", "flops=0.4",
           "--seeds", "0", "--epochs", "1", "--batch-size", "8", "--no-latency", "--keep", "all", "--out",
           str(tmp_path / "cmp")]
    result = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "cmp" / "points.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["flops=0.4|uniform:l1|seed=0", "flops=0.4|global:l1|seed=0"]
    for line in lines:
        report = json.loads((tmp_path / "cmp" / json.loads(line)["bundle"] / "report.json").read_text())
        assert report["config"]["world_size"] == 2
    again = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "cmp" / "points.jsonl").read_text().splitlines() == lines
