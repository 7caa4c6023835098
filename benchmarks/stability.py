"""Is `prunecli bench` repeatable? Consecutive runs of the same command, compared.

    python benchmarks/stability.py                  # resnet18 dense, batch 1, --runs 200, 3 runs x thread settings

Each repeat is a separate `prunecli bench MODEL --runs 200 --json` process, one after another, as a CI
job would run it. Writes benchmarks/results/stability.md: p50/p90/std per repeat and the spread
(max p50 - min p50) / min p50, for the default threads (physical cores) and for 1 thread.
Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="default,1")
    parser.add_argument("--out", default="benchmarks/results/stability.md")
    args = parser.parse_args()
    exe = [sys.executable, "-m", "prunecli"]
    from prunecli.runtime.timing import cpu_model, physical_cores

    lines = [
        "# Stability of `prunecli bench` (consecutive runs)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({physical_cores()} physical cores). Model "
        f"{args.model} exported to ONNX once, batch 1, `--runs {args.runs}` after 10 warmup runs, each repeat a "
        "separate process started after the previous one ended.",
        "",
        "| threads | repeat | p50 ms | p90 ms | std ms | min ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    spreads = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        subprocess.run(exe + ["export", args.model, "--out", str(onnx)], check=True, capture_output=True)
        for threads in args.threads.split(","):
            p50s = []
            for repeat in range(1, args.repeats + 1):
                cmd = exe + ["bench", str(onnx), "--runs", str(args.runs), "--json"]
                if threads != "default":
                    cmd += ["--threads", threads]
                doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                m = doc["model"]
                p50s.append(m["p50_ms"])
                lines.append(f"| {doc['threads']} ({threads}) | {repeat} | {m['p50_ms']:.3f} | {m['p90_ms']:.3f} | "
                             f"{m['std_ms']:.3f} | {m['min_ms']:.3f} |")
                print(lines[-1], flush=True)
            spread = (max(p50s) - min(p50s)) / min(p50s)
            consecutive = max(abs(a - b) / min(a, b) for a, b in zip(p50s, p50s[1:]))
            spreads.append(f"- threads {threads}: p50 spread over {args.repeats} repeats {spread:.1%}; "
                           f"largest difference between consecutive repeats {consecutive:.1%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines + [""] + spreads) + "\n")
    print("\n".join(spreads))


if __name__ == "__main__":
    main()
