"""`prunecli demo`: the whole job on real data that ships offline.

Trains a CIFAR-style ResNet-20 (prunecli:cifar_resnet) on scikit-learn's digits at 16x16 (cached
in the user cache directory, so a second run skips training), prunes it to a FLOPs budget, fine-tunes
with distillation from the dense model, exports and verifies ONNX, and benches dense vs pruned.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from prunecli.core.cache import cache_dir

DEMO_ARCH = "prunecli:cifar_resnet:depth=20,width=16,num_classes=10"
DEMO_SHAPE = (1, 3, 16, 16)
DENSE_RECIPE = {"epochs": 30, "lr": 0.1, "optimizer": "sgd", "weight_decay": 5e-4, "seed": 0, "batch_size": 64}
CACHE_NAME = "demo-digits-resnet20-v2.pt"  # v2: arch is the data spec prunecli:cifar_resnet


def dense_checkpoint(progress=None) -> tuple[Path, bool]:
    """(path, cached) of the trained dense demo model, training it on the first call."""
    import torch

    from prunecli.models.arch import build_arch
    from prunecli.train.data import DataConfig, load_data
    from prunecli.train.finetune import FinetuneConfig, evaluate, fit

    path = cache_dir() / CACHE_NAME
    if path.is_file():
        return path, True
    torch.manual_seed(DENSE_RECIPE["seed"])
    model = build_arch(DEMO_ARCH)
    loaders = load_data(DataConfig("digits", batch_size=DENSE_RECIPE["batch_size"]), DEMO_SHAPE, seed=DENSE_RECIPE["seed"])
    config = FinetuneConfig(epochs=DENSE_RECIPE["epochs"], lr=DENSE_RECIPE["lr"], optimizer=DENSE_RECIPE["optimizer"],
                            weight_decay=DENSE_RECIPE["weight_decay"], seed=DENSE_RECIPE["seed"])
    fit(model, loaders.train, loaders.val, config, None, progress=progress, label="train dense ResNet-20 on digits")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"arch": DEMO_ARCH, "state_dict": model.state_dict(), "input_shape": list(DEMO_SHAPE),
                "trained_on": "digits", "recipe": DENSE_RECIPE, "val": evaluate(model, loaders.val)}, tmp)
    os.replace(tmp, path)
    return path, False


def check_demo_flags(out: Path | None, *, flops: float, epochs: int) -> None:
    """Every demo flag, before the dense model trains."""
    import math

    from prunecli.core.errors import UsageError
    from prunecli.core.outputs import check_out_dir

    if not (math.isfinite(flops) and 0 < flops < 1):
        raise UsageError(f"--flops {flops}: the demo's budget is a fraction of the dense FLOPs in (0, 1), e.g. 0.5")
    if epochs < 0:
        raise UsageError(f"--epochs {epochs} must be >= 0 (0 skips fine-tuning)")
    if out is not None:
        check_out_dir(out, force=False)


def run_demo(out: Path | None, *, flops: float = 0.5, epochs: int = 15, progress=None) -> dict:
    from prunecli.artifacts.load import load_model
    from prunecli.pipeline.config import PruneConfig
    from prunecli.pipeline.prune import run_prune
    from prunecli.plan.targets import BudgetTarget
    from prunecli.runtime.bench import BenchConfig, run_bench
    from prunecli.runtime.export import run_export
    from prunecli.train.data import DataConfig, load_data
    from prunecli.train.finetune import FinetuneConfig

    started = time.perf_counter()
    out = Path(out) if out else Path(f"prunecli-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    check_demo_flags(out, flops=flops, epochs=epochs)
    out.mkdir(parents=True, exist_ok=True)
    cached_path, cached = dense_checkpoint(progress)
    shutil.copyfile(cached_path, out / "dense.pt")
    loaded = load_model(str(out / "dense.pt"))
    loaders = load_data(DataConfig("digits"), loaded.input_shape, seed=0)
    report = run_prune(loaded, PruneConfig(flops=BudgetTarget("flops", flops)), out / "pruned", data=loaders,
                       finetune=FinetuneConfig(epochs=epochs, lr=0.02, distill=True, seed=0), progress=progress,
                       measure_latency=False)
    run_export(loaded, out / "dense.onnx")
    bench = run_bench(out / "pruned" / "model.onnx", out / "dense.onnx", BenchConfig(warmup=10, runs=100),
                      tuple(loaded.input_shape))
    summary = {
        "out": str(out),
        "dense_checkpoint": str(out / "dense.pt"),
        "bundle": str(out / "pruned"),
        "dense_cached": cached,
        "accuracy": report["accuracy"],
        "budget": report["budget"],
        "achieved": report["achieved"],
        "onnx": {"max_abs_diff": report["onnx"]["max_abs_diff"], "relative_diff": report["onnx"]["relative_diff"]},
        "latency": {"provider": bench["provider"], "threads": bench["threads"], "runs": bench["runs"],
                    "batch": bench["model"]["batch"], "dense_p50_ms": bench["baseline"]["p50_ms"],
                    "pruned_p50_ms": bench["model"]["p50_ms"], "ratio_p50": bench["ratio"]["p50"]},
        "seconds": time.perf_counter() - started,
        "next": [f"prunecli inspect {out / 'dense.pt'}",
                 f"prunecli prune {out / 'dense.pt'} --flops 0.25 --data digits --epochs 15 --distill --out {out / 'pruned-025'}",
                 f"prunecli bench {out / 'pruned' / 'model.onnx'} --baseline {out / 'dense.onnx'} --max-latency-ratio 0.8"],
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return summary
