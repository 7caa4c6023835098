"""Which latency statistic should a budget verdict be decided on? Spread of candidate ratio statistics across fresh
measuring processes spread over an hour, on a quiet machine and beside a busy neighbour (issue 32).

    python benchmarks/latency_stat.py prepare                   # export the pairs once (dense vs pruned ONNX)
    python benchmarks/latency_stat.py run --sessions 12 --every 300   # resumable; run it alone, in the background
    python benchmarks/latency_stat.py table                     # benchmarks/results/latency_stat.md

Each session starts a fresh prunecli measuring process (:class:`prunecli.runtime.timing.Runtime`, the one `prune`,
`bench` and the fit use), opens a pair (dense and pruned ONNX), times them interleaved in blocks of 10 runs as the
fit does, and appends the raw samples to benchmarks/results/latency_stat_runs.jsonl. Sessions alternate between a
quiet machine and one with a busy neighbour (one process spinning on a core, as another job on a shared CI runner).
The statistics are computed afterwards from the same samples, so every candidate sees exactly the same runs:

- ``p50``, ``p90``, ``mean``: ratio of the two models' statistic over all runs (what a deployment sees);
- ``min``, ``p10``, ``p25``: ratio of low order statistics (interference only ever adds time);
- ``block-min``: median over blocks of each block's minimum, model over baseline (a slow spell spoils a block,
  not the statistic);
- ``pair-min``: median over block pairs of (model block minimum / baseline block minimum): the two blocks of a pair
  ran back to back, so noise that lasts longer than a pair cancels in it.

Other work on the machine moves the numbers: ``run`` holds an exclusive lock on /tmp/prunecli-bench.lock during
each session (run other work as ``flock /tmp/prunecli-bench.lock CMD`` to keep out of it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics as st
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _machine import cpu_flags

HERE = Path(__file__).parent
RESULTS = HERE / "results"
RUNS = RESULTS / "latency_stat_runs.jsonl"
TABLE = RESULTS / "latency_stat.md"
WORK = HERE / ".work" / "latency_stat"
LOCK = "/tmp/prunecli-bench.lock"
CLI = [sys.executable, "-m", "prunecli"]
BLOCK = 10
# (name, model spec, prune flags, batch, runs per model per session)
PAIRS = [
    ("resnet18-b1", "torchvision:resnet18", ["--flops", "0.5"], 1, 400),
    ("mobilenet_v2-b1", "torchvision:mobilenet_v2", ["--flops", "0.5"], 1, 600),
    ("resnet18-b8", "torchvision:resnet18", ["--flops", "0.5"], 8, 120),
]
STATS = ("p50", "p90", "mean", "min", "p10", "p25", "block-min", "pair-min")


def prepare() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    for name, spec, flags, _, _ in PAIRS:
        model = spec.split(":")[1]
        dense, pruned = WORK / f"{model}-dense.onnx", WORK / f"{model}-pruned"
        if not dense.exists():
            subprocess.run(CLI + ["export", spec, "--out", str(dense)], check=True)
        if not pruned.exists():
            subprocess.run(CLI + ["prune", spec, *flags, "--no-latency", "--out", str(pruned)], check=True,
                           stdout=subprocess.DEVNULL)
        print(name, dense, pruned / "model.onnx")


def statistic(m: np.ndarray, b: np.ndarray, stat: str) -> float:
    """model / baseline by ``stat``; ``m`` and ``b`` are (blocks, runs per block) arrays timed pairwise."""
    if stat == "block-min":
        return float(np.median(m.min(axis=1)) / np.median(b.min(axis=1)))
    if stat == "pair-min":
        return float(np.median(m.min(axis=1) / b.min(axis=1)))
    if stat == "min":
        return float(m.min() / b.min())
    if stat == "mean":
        return float(m.mean() / b.mean())
    q = int(stat[1:])
    return float(np.percentile(m, q) / np.percentile(b, q))


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def session(pair, condition: str, index: int) -> dict:
    from prunecli.runtime.timing import Runtime, RuntimeConfig, cpu_model, physical_cores

    name, spec, _, batch, runs = pair
    model = spec.split(":")[1]
    config = RuntimeConfig("cpu", 2, batch, warmup=10)
    neighbour = _busy() if condition == "busy" else None
    runtime = Runtime("cpu", 2)  # a fresh measuring process for every session
    try:
        t0 = time.time()
        pruned = runtime.open("model", WORK / f"{model}-pruned" / "model.onnx", config, None)
        dense = runtime.open("baseline", WORK / f"{model}-dense.onnx", config, None)
        runtime.measure([pruned, dense], runs, block=BLOCK)
        wall = time.time() - t0
    finally:
        runtime.close()
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return {"pair": name, "condition": condition, "session": index, "started": t0, "wall_s": wall,
            "cpu": cpu_model(), "flags": "".join(", " + f for f in cpu_flags()), "cores": physical_cores(),
            "threads": 2, "batch": batch, "block": BLOCK,
            "model_ms": pruned.samples_ms, "baseline_ms": dense.samples_ms}


def done() -> set:
    if not RUNS.exists():
        return set()
    return {(r["pair"], r["session"], r["cpu"]) for r in map(json.loads, RUNS.read_text().splitlines())}


def run(sessions: int, every: float) -> None:
    from prunecli.runtime.timing import cpu_model

    cpu = cpu_model()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for index in range(sessions):
        condition = "quiet" if index % 2 == 0 else "busy"
        todo = [p for p in PAIRS if (p[0], index, cpu) not in done()]
        if not todo:
            continue
        start = time.time()
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for pair in todo:
                row = session(pair, condition, index)
                with RUNS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                m, b = _blocks(row)
                print(f"session {index} {condition:5s} {pair[0]:16s} " +
                      " ".join(f"{s}={statistic(m, b, s):.4f}" for s in STATS), flush=True)
        if index + 1 < sessions:
            time.sleep(max(0.0, every - (time.time() - start)))


def _blocks(row: dict) -> tuple[np.ndarray, np.ndarray]:
    k = min(len(row["model_ms"]), len(row["baseline_ms"])) // row["block"] * row["block"]
    m = np.asarray(row["model_ms"][:k]).reshape(-1, row["block"])
    b = np.asarray(row["baseline_ms"][:k]).reshape(-1, row["block"])
    return m, b


def within(row: dict, stat: str, parts: int = 4) -> float:
    """The statistic's spread across ``parts`` consecutive segments of one session (what one process can see of
    the machine's drift, without a second process)."""
    m, b = _blocks(row)
    k = len(m) // parts
    return spread([statistic(m[i * k:(i + 1) * k], b[i * k:(i + 1) * k], stat) for i in range(parts)])


def spread(values: list[float]) -> float:
    """(max - min) / median: the range a verdict could land anywhere in."""
    return (max(values) - min(values)) / st.median(values) if len(values) > 1 else float("nan")


def table() -> None:
    rows = [json.loads(line) for line in RUNS.read_text().splitlines()]
    cpus = sorted({r["cpu"] for r in rows})
    out = ["# Which statistic decides a latency verdict: spread across fresh measuring processes", "",
           "Written by `python benchmarks/latency_stat.py table` from `latency_stat_runs.jsonl`. Each session is a fresh "
           "prunecli measuring process (onnxruntime CPU, 2 intra-op threads, one shared spinning pool) timing a pruned "
           "model (`--flops 0.5`, uniform l1, random init, 224x224) and its dense model interleaved in blocks of 10 "
           "runs, as the latency fit does; sessions alternate quiet / busy (one other process spinning on a core) and "
           "are spread over the hour. Spread = (max - min) / median of the sessions' ratios; shift = median busy / "
           "median quiet - 1; within a session = median over sessions of the spread across 4 consecutive segments of "
           "one session. Timings are never compared across CPUs.", ""]
    for cpu in cpus:
        mine = [r for r in rows if r["cpu"] == cpu]
        flags = mine[0].get("flags", "")
        span = (max(r["started"] for r in mine) - min(r["started"] for r in mine)) / 60
        out += [f"## {cpu} ({mine[0]['cores']} cores{flags})", "",
                f"{len({r['session'] for r in mine})} sessions over {span:.0f} minutes.", ""]
        summary: dict[str, list[float]] = {s: [] for s in STATS}
        quiet_summary: dict[str, list[float]] = {s: [] for s in STATS}
        disagree: dict[str, list[float]] = {"quiet": [], "busy": []}
        for pair in dict.fromkeys(r["pair"] for r in mine):
            sel = [r for r in mine if r["pair"] == pair]
            quiet = [r for r in sel if r["condition"] == "quiet"]
            busy = [r for r in sel if r["condition"] == "busy"]
            out += [f"### {pair}: {len(quiet)} quiet + {len(busy)} busy sessions, "
                    f"{len(sel[0]['model_ms'])} runs per model each", "",
                    "| statistic | median ratio (quiet) | spread quiet | spread busy | spread all | shift busy | "
                    "within a session |",
                    "|---|---:|---:|---:|---:|---:|---:|"]
            for s in STATS:
                q = [statistic(*_blocks(r), s) for r in quiet]
                b = [statistic(*_blocks(r), s) for r in busy]
                both = q + b
                shift = st.median(b) / st.median(q) - 1 if q and b else float("nan")
                summary[s].append(spread(both))
                quiet_summary[s].append(spread(q))
                inside = st.median([within(r, s) for r in sel])
                out.append(f"| {s} | {st.median(q) if q else float('nan'):.4f} | {spread(q):.1%} | {spread(b):.1%} | "
                           f"{spread(both):.1%} | {shift:+.1%} | {inside:.1%} |")
            for r in sel:
                m, b = _blocks(r)
                disagree[r["condition"]].append((pair, abs(statistic(m, b, "p50") / statistic(m, b, "block-min") - 1)))
            out.append("")
        out += ["### Over all pairs", "",
                "| statistic | mean spread, quiet | worst pair, quiet | mean spread, all sessions | worst pair, all |",
                "|---|---:|---:|---:|---:|"]
        for s in sorted(STATS, key=lambda s: st.mean(quiet_summary[s])):
            out.append(f"| {s} | {st.mean(quiet_summary[s]):.1%} | {max(quiet_summary[s]):.1%} | "
                       f"{st.mean(summary[s]):.1%} | {max(summary[s]):.1%} |")
        out += ["", "### p50 against block-min within one session (the noise signal prunecli reports as `disagreement`)",
                "", "| pair | quiet sessions | busy sessions |", "|---|---|---|"]
        for pair in dict.fromkeys(p for p, _ in disagree["quiet"] + disagree["busy"]):
            cells = []
            for condition in ("quiet", "busy"):
                v = [d for p, d in disagree[condition] if p == pair]
                cells.append(f"{min(v):.1%}-{max(v):.1%}" if v else "-")
            out.append(f"| {pair} | {cells[0]} | {cells[1]} |")
        out.append("")
    TABLE.write_text("\n".join(out) + "\n")
    print("\n".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    r = sub.add_parser("run")
    r.add_argument("--sessions", type=int, default=12)
    r.add_argument("--every", type=float, default=300, help="seconds from one session's start to the next")
    sub.add_parser("table")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.cmd == "prepare":
        prepare()
    elif args.cmd == "run":
        run(args.sessions, args.every)
    else:
        table()


if __name__ == "__main__":
    main()
