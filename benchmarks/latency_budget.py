"""Latency budget benchmark (issue 17): does `prune --latency T` land within 5% below T when re-measured in a fresh
process, and how many more FLOPs/params does it keep than FLOPs-budget pruning (uniform l1) at equal latency?

Per cell (model, target, batch):
1. `prunecli prune torchvision:MODEL --latency T --latency-batch B --threads 2` (fresh process; wall time recorded);
2. `prunecli bench OUT --baseline dense.onnx --batch B --threads 2 --runs R` in another fresh process: the re-measured ratio;
3. the comparison: `--flops f --allocation uniform --criterion l1`, f bisected (each candidate re-measured the same
   way) until its measured ratio is within 1.5% of step 2's; its FLOPs and params against the latency result's.

Raw runs go to benchmarks/results/latency_budget_runs.jsonl (resumable: finished cells are skipped); the table to
benchmarks/results/latency_budget.md. Latency benchmarks must run alone on the machine.

    python benchmarks/latency_budget.py [--models resnet18,mobilenet_v2] [--targets 0.75,0.5,0.3] [--batches 1,8]
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

RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "latency_budget_runs.jsonl"
TABLE = RESULTS / "latency_budget.md"
CLI = [sys.executable, "-m", "prunecli"]
# how prunecli timed: "measuring-process" = a child process with onnxruntime only and one shared spinning pool
# (current); rows without the field were timed with non-spinning per-session pools in the pruning process
METHOD = "measuring-process"


def run(args: list[str]) -> tuple[int, dict | None, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(CLI + args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    doc = None
    if p.stdout.strip().startswith("{"):
        try:
            doc = json.loads(p.stdout)
        except ValueError:
            doc = None
    return p.returncode, doc, wall, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""


def bench_ratio(out: Path, dense: Path, batch: int, runs: int) -> float:
    code, doc, _, err = run(["bench", str(out), "--baseline", str(dense), "--batch", str(batch), "--threads", "2",
                             "--runs", str(runs), "--json"])
    if doc is None:
        raise RuntimeError(f"bench failed ({code}): {err}")
    return doc["ratio"]["p50"]


def cell(model: str, target: float, batch: int, work: Path, runs: int, compare: bool = True) -> dict:
    spec = f"torchvision:{model}"
    dense = work / f"{model}-dense.onnx"
    if not dense.exists():
        code, _, _, err = run(["export", spec, "--out", str(dense)])
        if code:
            raise RuntimeError(f"export failed: {err}")
    out = work / f"{model}-{target}-{batch}"
    code, report, wall, err = run(["prune", spec, "--latency", str(target), "--latency-batch", str(batch),
                                   "--threads", "2", "--out", str(out), "--force", "--json"])
    row = {"model": model, "target": target, "batch": batch, "exit": code, "prune_wall_s": wall,
           "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "threads": 2, "method": METHOD}
    if report is None:
        row["error"] = err
        return row
    lat = report["budget"]["latency"]
    row.update({"in_process": lat["measured"], "ci95": lat["ci95"], "predicted": lat["predicted"],
                "flops_ratio": report["achieved"]["flops_ratio"], "params_ratio": report["achieved"]["params_ratio"],
                "probes": len(lat["fit_probes"]), "cpu": lat["cpu"]})
    row["fresh"] = bench_ratio(out, dense, batch, runs)
    row["within_5pct_below"] = target * 0.95 <= row["fresh"] <= target
    if not compare:
        return row
    # the comparison: a FLOPs budget (uniform l1) bisected to the same measured latency
    lo, hi, best = 0.05, 0.999, None
    for _ in range(7):
        f = (lo + hi) / 2
        fo = work / f"{model}-{target}-{batch}-flops"
        code, rep, _, err = run(["prune", spec, "--flops", f"{f:.4f}", "--allocation", "uniform", "--criterion", "l1",
                                 "--no-latency", "--out", str(fo), "--force", "--json"])
        if rep is None:
            lo = f
            continue
        measured = bench_ratio(fo, dense, batch, runs)
        if best is None or abs(measured - row["fresh"]) < abs(best["measured"] - row["fresh"]):
            best = {"flops_budget": f, "measured": measured, "flops_ratio": rep["achieved"]["flops_ratio"],
                    "params_ratio": rep["achieved"]["params_ratio"]}
        if abs(measured / row["fresh"] - 1) <= 0.015:
            break
        if measured > row["fresh"]:
            hi = f
        else:
            lo = f
    row["flops_pruning"] = best
    if best:
        row["more_flops_kept"] = row["flops_ratio"] / best["flops_ratio"] - 1
        row["more_params_kept"] = row["params_ratio"] / best["params_ratio"] - 1
    return row


def table(rows: list[dict]) -> str:
    current = [r for r in rows if r.get("method") == METHOD]
    earlier = [r for r in rows if r.get("method") != METHOD]
    text = _table(current, "measured in prunecli's measuring process (onnxruntime only, one shared spinning pool)")
    if earlier:
        text += "\n" + _table(earlier, "earlier method: non-spinning per-session pools in the pruning process "
                                       "(superseded; kept for comparison)")
    return text


def _table(rows: list[dict], how: str) -> str:
    lines = [f"# Latency budget: `prune --latency T`, re-measured in a fresh process ({how})", "",
             "onnxruntime CPU, 2 intra-op threads, p50; `fresh` = `prunecli bench OUT --baseline dense.onnx` in a new "
             "process. FLOPs pruning = `--flops f --allocation uniform --criterion l1`, f bisected to the same measured "
             "latency.", "",
             "| model | batch | target | exit | fresh ratio | in-process (95% CI) | predicted | within 5% below | FLOPs kept | "
             "params kept | FLOPs kept by FLOPs pruning at equal latency (its ratio) | more FLOPs kept | prune wall s |",
             "|---|---:|---:|---:|---:|---|---:|---|---:|---:|---|---:|---:|"]
    for r in rows:
        if "fresh" not in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['target']} | {r['exit']} | - | {r.get('error', '')} |"
                         " | | | | | | {:.0f} |".format(r["prune_wall_s"]))
            continue
        fp = r.get("flops_pruning") or {}
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['target']} | {r['exit']} | {r['fresh']:.3f} | {r['in_process']:.3f} "
            f"({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | {r['predicted']:.3f} | {'yes' if r['within_5pct_below'] else 'NO'} | "
            f"{r['flops_ratio']:.3f} | {r['params_ratio']:.3f} | "
            f"{fp.get('flops_ratio', float('nan')):.3f} ({fp.get('measured', float('nan')):.3f}) | "
            f"{r.get('more_flops_kept', float('nan')):+.1%} | {r['prune_wall_s']:.0f} |")
    if rows:
        lines += ["", f"Machine: {rows[0].get('cpu', '?')}, {rows[0]['machine']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,efficientnet_b0,vgg16_bn")
    parser.add_argument("--targets", default="0.75,0.5,0.3")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-compare", action="store_true", help="skip the FLOPs-budget bisection at equal latency")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    done = [json.loads(line) for line in RUNS.read_text().splitlines()] if RUNS.exists() else []
    seen = {(r["model"], r["target"], r["batch"]) for r in done if r.get("method") == METHOD}
    with tempfile.TemporaryDirectory(prefix="latency-budget-") as tmp:
        for batch in [int(b) for b in args.batches.split(",")]:
            for model in args.models.split(","):
                for target in [float(t) for t in args.targets.split(",")]:
                    if (model, target, batch) in seen:
                        continue
                    row = cell(model, target, batch, Path(tmp), args.runs, compare=not args.no_compare)
                    with RUNS.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    done.append(row)
                    TABLE.write_text(table(done))
                    print(json.dumps(row), flush=True)
    TABLE.write_text(table(done))


if __name__ == "__main__":
    main()
