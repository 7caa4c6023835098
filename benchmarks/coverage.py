"""Coverage: `prune --flops 0.5` on torchvision classification models and a committed timm list, one subprocess
per model.

    python benchmarks/coverage.py                       # every torchvision classification model
    python benchmarks/coverage.py --models resnet18,vgg16_bn --out benchmarks/results/coverage_core.md
    python benchmarks/coverage.py --list benchmarks/timm_models.txt --out benchmarks/results/coverage_timm.md --resume

A name without a source is torchvision's (``resnet18``); a list names full specs (``timm:resnet18``) or timm names.
Every stage of a run is bounded by ``--stage-timeout`` (prunecli's ``--timeout``): a model past it is refused
naming the stage; ``--timeout`` is the outer bound on the whole subprocess.

Weights initialised to all zeros (torchvision ViT's head) are filled with N(0, 0.02) noise, so that the outputs,
and with them ONNX parity and the dense check, are not identically zero. Each model is built at its preset's input
shape (224x224 unless the preset says otherwise), pruned
with l1/uniform to --flops 0.5, exported to ONNX and verified against PyTorch in onnxruntime. The
table records status, achieved FLOPs ratio (FlopCounterMode), max abs ONNX diff and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
from prunecli.plan.config import BudgetTarget, PruneConfig
from prunecli.core.errors import PruneCliError
from prunecli.artifacts.load import load_model
from prunecli.pipeline.prune import run_prune
name, out, flops, stage_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
t0 = time.perf_counter()
try:
    loaded = load_model(name if ":" in name else f"torchvision:{name}")
    import torch
    with torch.no_grad():  # a weight initialised to all zeros (torchvision ViT's head) makes every output 0, and
        for p in loaded.model.parameters():  # then neither ONNX parity nor the dense check can see anything
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    config = PruneConfig(flops=BudgetTarget("flops", flops), timeout=stage_timeout)
    report = run_prune(loaded, config, Path(out), measure_latency=False)
    check = report["correctness"][-1]
    row = {"status": "ok", "ratio": report["achieved"]["flops_ratio"], "diff": report["onnx"]["max_abs_diff"],
           "scale": report["onnx"]["max_abs_output"],
           "check": (f"zeroed dense: {check['max_abs_diff']:.1e} / tol {check['tolerance']:.1e}" if check["identity"]
                     else "shape only: " + check["reason"].split(",")[0])}
except PruneCliError as exc:
    row = {"status": f"refused (exit {exc.exit_code}): {str(exc)[:160]}"}
row["seconds"] = time.perf_counter() - t0
print("ROW " + json.dumps(row))
"""


def run_one(name: str, flops: float, timeout: int, stage_timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, name, os.path.join(tmp, "o"), str(flops),
                                   str(stage_timeout)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": f"timeout after {timeout}s", "seconds": time.perf_counter() - start}
        for line in proc.stdout.splitlines():
            if line.startswith("ROW "):
                return json.loads(line[4:])
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"crashed: {tail[:160]}", "seconds": time.perf_counter() - start}


def _line(name: str, row: dict) -> str:
    if "ratio" in row:
        return (f"| {name} | {row['status']} | {row['ratio']:.4f} | {row['diff']:.2e} | {row['scale']:.2e} | "
                f"{row.get('check', '-')} | {row['seconds']:.1f} |")
    return f"| {name} | {row['status']} | - | - | - | - | {row['seconds']:.1f} |"


def _timm_version() -> str:
    try:
        import timm
    except ImportError:
        return ""
    return f", timm {timm.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: all torchvision classification models)")
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--list", help="a file of model specs, one per line (timm names may omit 'timm:')")
    parser.add_argument("--timeout", type=int, default=1800, help="outer bound: seconds per model subprocess")
    parser.add_argument("--stage-timeout", type=float, default=600, help="prunecli --timeout: seconds per stage")
    parser.add_argument("--out", default="benchmarks/results/coverage.md")
    parser.add_argument("--resume", action="store_true", help="keep rows already in --out and run the rest")
    parser.add_argument("--retry", default="", help="with --resume: statuses to run again, e.g. crashed,timeout")
    parser.add_argument("--rerun", default="", help="with --resume: model names to run again, comma-separated")
    args = parser.parse_args()
    import torch
    import torchvision

    if args.list:
        names = [line.strip() for line in Path(args.list).read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        names = [n if ":" in n else f"timm:{n}" for n in names]
    else:
        names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.resume and out.is_file():
        for line in out.read_text().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if (len(cells) == 7 and cells[0] in names and cells[0] not in args.rerun.split(",")
                    and not (args.retry and cells[1].startswith(tuple(args.retry.split(","))))):
                row = {"status": cells[1], "seconds": float(cells[6])}
                if cells[2] != "-":
                    row.update(ratio=float(cells[2]), diff=float(cells[3]), scale=float(cells[4]), check=cells[5])
                done[cells[0]] = row
    header = [
        f"# Coverage: `prune --flops {args.flops}` (l1, uniform, preset round_to and input shape)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}{_timm_version()}, threads {torch.get_num_threads()}; every stage bounded at "
        f"{args.stage_timeout:g} s (prunecli --timeout), {args.timeout} s per model in all.",
        "",
        "ONNX diff: max |onnxruntime - PyTorch| over batches 1 and 2; output scale: max |PyTorch output| "
        "(random init: a near-zero scale makes any absolute diff small). Check: the pruned model against the dense "
        "model with the removed channels zeroed (max abs diff / tolerance, relative to the output scale), or, where "
        "that identity does not hold, the output shape only and why; a failed check is exit 3 (refused).",
        "",
        "| model | status | achieved FLOPs ratio | max abs ONNX diff | output scale | correctness check | seconds |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for name in names:
        row = done.get(name) or run_one(name, args.flops, args.timeout, args.stage_timeout)
        rows.append((name, row))
        print(_line(name, row), flush=True)
        ok = sum(1 for _, r in rows if r["status"] == "ok")
        summary = ["", f"{ok} of {len(rows)} models pruned, budget met, ONNX verified and checked against the dense model."]
        out.write_text("\n".join(header + [_line(n, r) for n, r in rows] + summary) + "\n")


if __name__ == "__main__":
    main()
