"""How long `prune --latency` takes, against `prune --flops` on the same model (issue 32's speed bar).

    python benchmarks/latency_speed.py [--model resnet18] [--repeats 3]

Fresh processes, alternating: `prunecli prune torchvision:MODEL --flops 0.5` (data-free, default flags),
`prunecli prune torchvision:MODEL --latency 0.5` with a warm latency cache (the layer tables and staircase of this
runtime measured before), and with a cold one (an empty $XDG_CACHE_HOME). Median wall time of ``--repeats``; raw
runs appended to benchmarks/results/latency_speed_runs.jsonl, the table to latency_speed.md. Each command holds
/tmp/prunecli-bench.lock (shared with the other latency benchmarks): run it alone.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_description

RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "latency_speed_runs.jsonl"
LOCK = "/tmp/prunecli-bench.lock"


def timed(args: list[str], cache: Path) -> tuple[float, dict]:
    import os

    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONWARNINGS": "ignore"}
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "prunecli", *args], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{args} exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    # exit 1 (a budget missed, or no plan landed in the window) is a result: recorded
    report = json.loads(p.stdout) if p.stdout.strip() else {"timings": {}, "budget": {}}
    return wall, {**report, "exit": p.returncode, "error": p.stderr.strip().splitlines()[-1] if p.returncode else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = f"torchvision:{args.model}"
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="latency-speed-") as tmp:
        warm = Path(tmp) / "warm-cache"
        timed(["prune", spec, "--latency", "0.5", "--threads", "2", "--out", f"{tmp}/w0", "--json"], warm)  # fills it
        for repeat in range(args.repeats):
            for kind, flags, cache in (
                ("flops", ["--flops", "0.5"], warm),
                ("latency-warm", ["--latency", "0.5", "--threads", "2"], warm),
                ("latency-cold", ["--latency", "0.5", "--threads", "2"], Path(tmp) / f"cold{repeat}"),
            ):
                wall, report = timed(["prune", spec, *flags, "--out", f"{tmp}/{kind}{repeat}", "--json"], cache)
                lat = report["budget"].get("latency", {})
                row = {"model": args.model, "kind": kind, "repeat": repeat, "wall_s": wall, "cpu": cpu_description(),
                       "timings": report["timings"], "measured": lat.get("measured"), "exit": report["exit"],
                       "error": report["error"],
                       "probes": len(lat.get("fit_probes", []))}
                rows.append(row)
                with RUNS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
    med = {k: statistics.median(r["wall_s"] for r in rows if r["kind"] == k) for k in ("flops", "latency-warm",
                                                                                         "latency-cold")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"# `prune --latency 0.5` against `prune --flops 0.5`: wall time (at {commit})", "",
             f"Machine: {cpu_description()}, 2 cores. torchvision:{args.model} (random init, 224x224), batch 1, onnxruntime CPU "
             f"with 2 threads; fresh processes, the three commands alternating, median of {args.repeats}. "
             "Command: `python benchmarks/latency_speed.py`.", "",
             "| command | median wall s | ratio to --flops | runs (s) | exits |", "|---|---:|---:|---|---|"]
    for k, v in med.items():
        runs = ", ".join(f"{r['wall_s']:.1f}" for r in rows if r["kind"] == k)
        exits = ", ".join(str(r["exit"]) for r in rows if r["kind"] == k)
        lines.append(f"| {k} | {v:.1f} | {v / med['flops']:.2f} | {runs} | {exits} |")
    stages = ("latency_dense_s", "latency_table_s", "search_s", "latency_s", "total_s")
    lines += ["", "Where `--latency` spends it (report.json timings, median s):", "",
              "| command | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
    for k in ("latency-warm", "latency-cold"):
        mine = [r for r in rows if r["kind"] == k]
        lines.append(f"| {k} | " + " | ".join(f"{statistics.median(r['timings'].get(s, 0.0) for r in mine):.1f}"
                                              for s in stages) + " |")
    table = RESULTS / "latency_speed.md"
    earlier = table.read_text() if table.exists() else ""  # earlier sections (other CPUs, other commits) kept below
    (RESULTS / "latency_speed.md").write_text("\n".join(lines) + "\n" + (f"\n## Earlier\n\n{earlier}" if earlier else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
