"""Does a FLOPs budget buy latency? Dense vs pruned onnxruntime latency on CPU.

    python benchmarks/latency.py                     # the full table (about 40 minutes on 2 cores)
    python benchmarks/latency.py --models resnet18 --budgets 0.5 --runs 10   # a quick look

For each model (torchvision, random init, preset input shape) the dense model is exported once; for
each budget and allocation (criterion l1) the model is pruned with `prune --flops F` and its ONNX is
timed against the dense ONNX with `prunecli bench`'s interleaved measurement, at batch 1 and 8.
Writes a markdown table to benchmarks/results/latency.md: FLOPs ratio (FlopCounterMode) against the
measured p50 latency ratio. Run it on a quiet machine: nothing else should compete for the cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,vgg16_bn,efficientnet_b0")
    parser.add_argument("--budgets", default="0.75,0.5,0.25")
    parser.add_argument("--allocations", default="uniform,global")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per model and batch (batch 8 uses half)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/latency.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import onnxruntime as ort
    import torch

    from prunecli.artifacts.load import load_model
    from prunecli.pipeline.config import PruneConfig
    from prunecli.pipeline.prune import run_prune
    from prunecli.plan.allocators import ALLOCATORS
    from prunecli.plan.targets import BudgetTarget
    from prunecli.runtime.bench import BenchConfig, run_bench
    from prunecli.runtime.export import run_export
    from prunecli.runtime.timing import cpu_model, physical_cores

    threads = args.threads or physical_cores()
    header = [
        "# Latency: FLOPs ratio vs measured latency ratio (onnxruntime CPU)",
        "",
        f"Machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} logical CPUs; onnxruntime {ort.__version__} "
        f"CPUExecutionProvider, {threads} intra-op threads, graph optimisation ORT_ENABLE_ALL; torch {torch.__version__}.",
        f"Each cell: pruned vs dense timed interleaved in one process (blocks of 5), {args.runs} runs at batch 1 and "
        f"{max(5, args.runs // 2)} at batch 8 after 5 warmup runs; p50 latency. Criterion l1; random-init weights "
        "(latency does not depend on values).",
        "",
        "| model | allocation | FLOPs target | FLOPs ratio | params ratio | dense p50 b1 (ms) | pruned p50 b1 (ms) | "
        "latency ratio b1 | dense p50 b8 (ms) | pruned p50 b8 (ms) | latency ratio b8 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows: list[str] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in args.models.split(","):
        loaded = load_model(f"torchvision:{name}")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            run_export(loaded, tmp / "dense.onnx")
            for allocation in args.allocations.split(","):
                for budget in (float(b) for b in args.budgets.split(",")):
                    report = run_prune(loaded, PruneConfig(flops=BudgetTarget("flops", budget),
                                                                  allocation=ALLOCATORS.config(allocation)()),
                                       tmp / f"{allocation}-{budget}", measure_latency=False)
                    cells = []
                    for batch in (int(b) for b in args.batches.split(",")):
                        runs = args.runs if batch == 1 else max(5, args.runs // 2)
                        doc = run_bench(tmp / f"{allocation}-{budget}" / "model.onnx", tmp / "dense.onnx",
                                        BenchConfig(threads=threads, batch=batch, warmup=5, runs=runs, block=5),
                                        tuple(loaded.input_shape))
                        cells += [f"{doc['baseline']['p50_ms']:.2f}", f"{doc['model']['p50_ms']:.2f}",
                                  f"{doc['ratio']['p50']:.3f}"]
                    a = report["achieved"]
                    rows.append(f"| {name} | {allocation} | {budget} | {a['flops_ratio']:.4f} | {a['params_ratio']:.4f} | "
                                + " | ".join(cells) + " |")
                    print(rows[-1], flush=True)
                    out.write_text("\n".join(header + rows) + "\n")
    footer = ["", f"Total wall time: {time.perf_counter() - started:.0f} s."]
    out.write_text("\n".join(header + rows + footer) + "\n")


if __name__ == "__main__":
    main()
