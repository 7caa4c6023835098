"""Data specs, fine-tuning, schedules, interrupts and data-driven criteria."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import prunecli
from prunecli.plan.criteria import channel_scores
from prunecli.train.data import DataConfig, load_data

TESTS = Path(__file__).parent
SMALL = ["--input-shape", "1,3,16,16"]


def _png_tree(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _cifar_folder(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 8) for i in range(1, 6)] + [("test_batch", 10)]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as fh:
            pickle.dump({k: v for k, v in batch.items()}, fh)
    return root


@pytest.mark.parametrize("kind", ["imagefolder", "cifar10"])
def test_prune_with_real_loaders(cli, tmp_path, kind):
    root = _png_tree(tmp_path / "imgs") if kind == "imagefolder" else _cifar_folder(tmp_path / "c")
    classes = 2 if kind == "imagefolder" else 10
    result = cli("prune", f"tinynets:tiny_resnet:num_classes={classes}", *SMALL, "--data", f"{kind}:{root}",
                 "--flops", "0.5", "--epochs", "1", "--batch-size", "8", "--no-latency", "--out", tmp_path / "o", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    for stage in ("dense", "pruned", "finetuned"):
        assert set(report["accuracy"][stage]) >= {"top1", "top5", "loss"}
    assert report["accuracy"]["split"] == "test"
    assert report["config"]["data"]["test"] == (6 if kind == "imagefolder" else 10)
    assert 0.495 <= report["achieved"]["flops_ratio"] <= 0.5
    rebuilt = prunecli.load_bundle(tmp_path / "o", arch=f"tinynets:tiny_resnet:num_classes={classes}")
    assert rebuilt(torch.randn(2, 3, 16, 16)).shape == (2, classes)


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    root = _cifar_folder(tmp_path / "c")
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": os.system, "labels": []}, fh)  # a pickle that would import os.system
    from prunecli.core.errors import UsageError

    with pytest.raises(UsageError, match="never needs"):
        load_data(DataConfig(f"cifar10:{root}"), (1, 3, 32, 32))


def test_digits_split_is_fixed_and_disjoint():
    a = load_data(DataConfig("digits"), (1, 3, 8, 8), seed=0)
    b = load_data(DataConfig("digits"), (1, 3, 8, 8), seed=5)
    assert a.describe() == b.describe() == {"spec": "digits", "train": 1294, "val": 144, "test": 359, "num_classes": 10,
                                          "skipped_images": []}
    assert a.val.dataset.indices == b.val.dataset.indices  # selection split does not move with --seed


@pytest.mark.parametrize("spec,message", [("imagefolder:/nope", "is missing"), ("cifar10:/nope", "not found"),
                                          ("mnist", "not a data spec")])
def test_bad_data_specs(cli, tmp_path, spec, message):
    result = cli("prune", "tinynets:tiny_resnet", *SMALL, "--data", spec, "--flops", "0.5", "--out", tmp_path / "o")
    assert result.code == 2 and message in result.stderr


@pytest.mark.parametrize("schedule", ["oneshot", "agp", "soft"])
def test_every_schedule_ends_on_budget(cli, tmp_path, schedule):
    result = cli("prune", "tinynets:tiny_resnet", *SMALL, "--data", "synthetic:96", "--flops", "0.4", "--epochs", "2",
                 "--schedule", schedule, "--agp-steps", "2", "--batch-size", "16", "--no-latency",
                 "--out", tmp_path / "o", "--json")
    assert result.code == 0, result
    budget = json.loads(result.stdout)["budget"]["flops"]
    assert budget["met"] and budget["gap"] <= 0.01
    recipe = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert len(recipe["plans"]) == (2 if schedule == "agp" else 1)
    from prunecli.graph.cost import count_flops

    rebuilt = prunecli.load_bundle(tmp_path / "o", arch="tinynets:tiny_resnet")
    assert count_flops(rebuilt, torch.randn(1, 3, 16, 16)) == budget["achieved"]


def test_agp_counts_follow_the_cubic_schedule():
    from prunecli.pipeline.schedules import agp_counts

    counts = [agp_counts(64, 16, 8, t, 4) for t in range(1, 5)]
    assert counts[-1] == 16 and counts == sorted(counts, reverse=True)
    assert all(c % 8 == 0 for c in counts)
    removed = [(64 - c) / 48 for c in counts]
    assert removed[0] == pytest.approx(1 - 0.75**3, abs=0.1)  # most of the pruning happens early (rounded to steps)
    assert removed[0] >= 0.5


def test_agp_ends_on_the_oneshot_counts_of_the_dense_fit(tmp_path):
    """The final step reaches exactly the per-group counts `oneshot` fits on the dense model."""
    from prunecli.artifacts.load import load_model
    from prunecli.pipeline.config import PruneConfig
    from prunecli.pipeline.schedules import SCHEDULES, Context
    from prunecli.plan.targets import BudgetTarget
    from prunecli.train.finetune import FinetuneConfig

    torch.manual_seed(0)
    loaded = load_model("tinynets:tiny_resnet:width=64", input_shape="1,3,16,16")
    from prunecli.pipeline.schedules import Agp

    config = PruneConfig(flops=BudgetTarget("flops", 0.5), round_to=1, schedule=Agp(steps=3))
    ctx = lambda: Context(loaded, config, FinetuneConfig(epochs=0), None, None, None, {})  # noqa: E731
    oneshot, agp = SCHEDULES.get("oneshot")(ctx()), SCHEDULES.get("agp")(ctx())
    assert len(agp.plans) == 3
    widths = lambda m: [p.shape for p in m.state_dict().values()]  # noqa: E731
    assert widths(agp.model) == widths(oneshot.model)


@pytest.mark.parametrize("criterion", ["taylor", "activation"])
def test_data_criteria_rank_a_useless_channel_last(criterion):
    from tinynets import TwoConv

    torch.manual_seed(0)
    model = TwoConv(bn=False).eval()
    with torch.no_grad():
        model.conv1.weight[5].zero_()  # channel 5 always outputs 0: useless
    x = torch.randn(8, 3, 16, 16)
    batches = [(x, torch.randint(0, 4, (8,))) for _ in range(3)]
    scores = channel_scores(model, x[:1], [("conv1", 8)], criterion, batches=batches)["conv1"]
    assert int(np.argmin(scores)) == 5
    assert all(p.grad is None for p in model.parameters())  # taylor leaves no gradients behind


NAN_DATA = '''
import torch

STATE = {"val_reads": 0}


class Poisoned(torch.utils.data.Dataset):
    """Clean until validation has run twice (before training and after epoch 1), NaN afterwards."""
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
    def __len__(self):
        return 32
    def __getitem__(self, i):
        nan = STATE["val_reads"] >= 32
        return (torch.full_like(self.x[i], float("nan")) if nan else self.x[i]), self.y[i]


class CountingVal(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    def __len__(self):
        return 16
    def __getitem__(self, i):
        STATE["val_reads"] += 1
        return self.x[i], self.y[i]


def loaders():
    test = torch.utils.data.TensorDataset(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,)))
    return (torch.utils.data.DataLoader(Poisoned(), batch_size=8),
            torch.utils.data.DataLoader(CountingVal(), batch_size=8),
            torch.utils.data.DataLoader(test, batch_size=8))
'''


def test_nan_loss_stops_with_a_kept_checkpoint(cli, tmp_path):
    (tmp_path / "nandata.py").write_text(NAN_DATA)
    result = cli("prune", "tinynets:tiny_resnet", *SMALL, "--data", f"{tmp_path}/nandata.py:loaders", "--flops", "0.5",
                 "--epochs", "3", "--no-latency", "--out", tmp_path / "o")
    assert result.code == 4
    line = result.stderr.strip()
    assert "became nan at epoch 2" in line and "Last good checkpoint" in line and len(line.splitlines()) == 1
    state = torch.load(tmp_path / "o" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not (tmp_path / "o" / "recipe.json").exists()  # no bundle from a diverged run


def test_sigint_keeps_best_bundle_and_resume_continues(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    args = [sys.executable, "-m", "prunecli", "prune", "tinynets:tiny_resnet:width=16", *SMALL, "--data", "synthetic:256",
            "--flops", "0.5", "--epochs", "20", "--batch-size", "16", "--no-latency", "--out", str(tmp_path / "o")]
    # A shell running the suite in the background starts it with SIGINT ignored, which children inherit and
    # Python then keeps; restore the default so the child turns SIGINT into KeyboardInterrupt as in a terminal.
    proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "o" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "--resume" in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["interrupted"] is True
    model = prunecli.load_bundle(tmp_path / "o", arch="tinynets:tiny_resnet:width=16")  # a loadable bundle from the best checkpoint
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < 20

    resumed = subprocess.run(args + ["--resume", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout)
    assert "interrupted" not in final
    assert len(final["history"]) == 20 and final["history"][done]["epoch"] == done + 1


@pytest.mark.parametrize("scratch", [False, True])
def test_from_scratch_trains_the_architecture_without_the_dense_weights(cli, tmp_path, monkeypatch, scratch):
    """--from-scratch: every filter that reaches training is new (none equals a dense filter); without it every kept
    filter is one of the dense model's."""
    import torch

    import prunecli.pipeline.schedules as schedules
    from prunecli.artifacts.load import load_model

    started = []
    real_fit = schedules.fit
    monkeypatch.setattr(schedules, "fit", lambda model, *a, **k: started.append(
        next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight.detach().clone())
        or real_fit(model, *a, **k))
    net = "tinynets:tiny_resnet:width=16"
    weights = tmp_path / "dense.pt"
    torch.save(load_model(net, input_shape="1,3,16,16").model.state_dict(), weights)
    result = cli("prune", net, "--weights", weights, *SMALL, "--data", "synthetic:64", "--flops", "0.5", "--epochs",
                 "1", "--no-latency", "--json", "--out", tmp_path / "o", *(["--from-scratch"] if scratch else []))
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["finetune"]["from_scratch"] is scratch
    assert (report["accuracy"]["pruned"] is None) is scratch
    dense = next(m for m in load_model(net, weights=weights, input_shape="1,3,16,16").model.modules()
                 if isinstance(m, torch.nn.Conv2d)).weight.detach()
    first = started[0]
    slices = [dense[i, :first.shape[1]] for i in range(dense.shape[0])]
    matches = [any(torch.equal(f, d) for d in slices) for f in first]
    assert (not any(matches)) if scratch else all(matches)


@pytest.mark.parametrize("extra,message", [
    ([], "--from-scratch trains the pruned architecture afresh: pass --data SPEC and --epochs N"),
    (["--data", "synthetic:64", "--epochs", "1", "--schedule", "agp"], "use --schedule oneshot, not agp"),
])
def test_from_scratch_refusals(cli, tmp_path, extra, message):
    result = cli("prune", "tinynets:tiny_resnet", *SMALL, "--flops", "0.5", "--from-scratch", *extra,
                 "--out", tmp_path / "o")
    assert result.code == 2 and message in result.stderr, result
    assert not (tmp_path / "o").exists()
