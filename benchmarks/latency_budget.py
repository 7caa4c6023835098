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

Issue 32's protocol (rows with ``method: issue32``): the prunes first, their bundles kept under benchmarks/.work;
then ``--rounds`` re-measurements of every cell, each a fresh `prunecli bench` process, ``--every`` seconds apart
(at least 30 minutes from the first to the last by default), with the dense model against itself in the same
rounds as the noise floor. Each command holds /tmp/prunecli-bench.lock, so other latency benchmarks wait.
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

from _machine import cpu_description

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


WORK = Path(__file__).parent / ".work" / "latency_budget"
TAG = "issue32-median3"  # set by --method; rows carry it
TAGS = {"issue32": "verdicts from one measuring process, commits up to cd9aa2f",
        "issue32-median3": "verdicts on the median of three measuring processes",
        "issue32-early": "median of processes, candidates measured until their verdict is clear, the final check "
                         "reusing the fit's measurement (commit 2eeaa5a)"}
LOCK = "/tmp/prunecli-bench.lock"  # benchmarks/latency_stat.py's: one latency measurement at a time on the machine


def _locked(args: list[str]):
    import fcntl

    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return run(args)


def decided_cell(model: str, target: float, batch: int, stat: str) -> dict:
    """`prune --latency` for one cell, its bundle kept under benchmarks/.work for the re-measurements."""
    spec = f"torchvision:{model}"
    WORK.mkdir(parents=True, exist_ok=True)
    dense = WORK / f"{model}-dense.onnx"
    if not dense.exists():
        code, _, _, err = run(["export", spec, "--out", str(dense)])
        if code:
            raise RuntimeError(f"export failed: {err}")
    out = WORK / f"{model}-{target}-{batch}-{stat}"
    code, report, wall, err = _locked(["prune", spec, "--latency", str(target), "--latency-batch", str(batch),
                                       "--latency-stat", stat, "--threads", "2", "--out", str(out), "--force", "--json"])
    row = {"kind": "prune", "model": model, "target": target, "batch": batch, "stat": stat, "exit": code,
           "prune_wall_s": wall, "cpu": cpu_description(), "threads": 2, "method": TAG, "started": time.time()}
    if report is None:
        row["error"] = err
        return row
    lat = report["budget"]["latency"]
    row.update({"in_process": lat["measured"], "ci95": lat["ci95"], "predicted": lat["predicted"],
                "noise": lat.get("noise"), "p50": lat["reported"]["p50"]["ratio"], "probes": len(lat["fit_probes"]),
                "flops_ratio": report["achieved"]["flops_ratio"], "params_ratio": report["achieved"]["params_ratio"],
                "timings": report["timings"]})
    return row


def remeasure(cells: list[dict], round_: int, runs: int, floor_cells: list[dict]) -> list[dict]:
    """One fresh `prunecli bench` process per cell (and the dense model against itself per model and batch: the
    machine's noise floor at that time), each giving the p50 and block-min ratios and the noise."""
    rows = []
    floors = {(c["model"], c["batch"]) for c in floor_cells}
    jobs = [(c["model"], c["target"], c["batch"], c["stat"], WORK / f"{c['model']}-{c['target']}-{c['batch']}-{c['stat']}")
            for c in cells] + [(m, None, b, "p50", WORK / f"{m}-dense.onnx") for m, b in sorted(floors)]
    for model, target, batch, stat, path in jobs:
        code, doc, wall, err = _locked(["bench", str(path), "--baseline", str(WORK / f"{model}-dense.onnx"), "--batch",
                                        str(batch), "--threads", "2", "--runs", str(runs), "--stat", stat, "--json"])
        row = {"kind": "remeasure", "round": round_, "model": model, "target": target, "batch": batch, "stat": stat,
               "cpu": cpu_description(), "method": TAG, "started": time.time(), "exit": code}
        if doc is not None:
            row.update({"decision": doc["ratio"][stat], "p50": doc["ratio"]["p50"], "block_min": doc["ratio"]["block-min"],
                        "noise": doc.get("ratio_decision", {}).get("noise"),
                        "ratios": doc["ratio"]})  # every statistic's ratio: their spread across processes
        else:
            row["error"] = err
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def stat_spreads(fresh: list[dict]) -> list[str]:
    """Which statistic held across the fresh processes: per statistic, the spread of each cell's ratio across its
    rounds ((max - min) / median), its median and largest over the cells (the same runs for every statistic)."""
    import statistics as st

    by_cell: dict = {}
    for r in fresh:
        by_cell.setdefault((r["model"], r["target"], r["batch"]), []).append(r["ratios"])
    cells = [v for v in by_cell.values() if len(v) >= 2]
    if not cells:
        return []
    stats = [s for s in ("p50", "mean", "p25", "p10", "block-min", "min", "p90") if all(s in x for v in cells for x in v)]
    lines = ["", f"Spread of each statistic's ratio across the fresh processes ({len(cells)} cells, "
                 f"{min(len(v) for v in cells)}-{max(len(v) for v in cells)} processes each; the same runs for every "
                 "statistic):", "", "| statistic | median spread | largest spread |", "|---|---:|---:|"]
    for s in stats:
        spreads = [(max(x[s] for x in v) - min(x[s] for x in v)) / st.median(x[s] for x in v) for v in cells]
        lines.append(f"| {s} | {st.median(spreads):.1%} | {max(spreads):.1%} |")
    return lines


def grid_table(rows: list[dict], tag: str, cpu: str) -> str:
    import statistics as st

    mine = [r for r in rows if r.get("method") == tag and r.get("cpu") == cpu]
    prunes = [r for r in mine if r["kind"] == "prune"]
    fresh = [r for r in mine if r["kind"] == "remeasure" and "decision" in r]
    rounds = sorted({r["round"] for r in fresh})
    span = (max(r["started"] for r in fresh) - min(r["started"] for r in fresh)) / 60 if fresh else 0
    lines = [f"# Latency budget: `prune --latency T`, re-measured in fresh processes ({TAGS.get(tag, tag)})", "",
             f"Machine: {cpu}, 2 cores; onnxruntime CPU, 2 intra-op threads. Written by `python benchmarks/"
             "latency_budget.py` (resumable; raw rows in latency_budget_runs.jsonl). Each cell: `prunecli prune "
             "torchvision:MODEL --latency T --latency-batch B --latency-stat S --threads 2` (random init, 224x224), "
             f"then re-measured by `prunecli bench OUT --baseline dense.onnx --runs 200 --stat S` in a fresh process "
             f"per round: {len(rounds)} rounds over {span:.0f} minutes. Pass = median of the fresh ratios (on S) at or "
             "below T and within 5% below it, and no fresh ratio more than 2% above T. Noise floor = the dense model "
             "against itself in the same rounds (its p50 ratio's range).", "",
             "| model | batch | T | stat | exit | prune s | FLOPs kept | in-process | fresh (S) per round | median | "
             "fresh p50 median | max noise | pass |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for p in prunes:
        key = (p["model"], p["target"], p["batch"], p["stat"])
        mine_fresh = [r for r in fresh if (r["model"], r["target"], r["batch"], r["stat"]) == key]
        if p["exit"] == 0 and not mine_fresh:
            lines.append(f"| {p['model']} | {p['batch']} | {p['target']} | {p['stat']} | 0 | {p['prune_wall_s']:.0f} | "
                         f"{p['flops_ratio']:.3f} | {p['in_process']:.3f} | not re-measured yet | | | "
                         f"{(p.get('noise') or 0):.1%} (in prune) | - |")
            continue
        if p["exit"] != 0 or not mine_fresh:
            lines.append(f"| {p['model']} | {p['batch']} | {p['target']} | {p['stat']} | {p['exit']} | "
                         f"{p['prune_wall_s']:.0f} | | | {p.get('error', '')[:120]} | | | | {'n/a' if p['exit'] == 2 else '-'} |")
            continue
        values = [r["decision"] for r in mine_fresh]
        med = st.median(values)
        ok = p["target"] * 0.95 <= med <= p["target"] and max(values) <= p["target"] * 1.02
        noise = max((r["noise"] or 0) for r in mine_fresh)
        lines.append(f"| {p['model']} | {p['batch']} | {p['target']} | {p['stat']} | 0 | {p['prune_wall_s']:.0f} | "
                     f"{p['flops_ratio']:.3f} | {p['in_process']:.3f} | {', '.join(f'{v:.3f}' for v in values)} | "
                     f"{med:.3f} | {st.median(r['p50'] for r in mine_fresh):.3f} | {noise:.1%} | "
                     f"{'yes' if ok else 'NO'} |")
    lines += stat_spreads([r for r in fresh if r["target"] is not None and "ratios" in r])
    floors = [r for r in fresh if r["target"] is None]
    if floors:
        lines += ["", "Noise floor (dense against itself, p50 ratio per round):", ""]
        for model, batch in sorted({(r["model"], r["batch"]) for r in floors}):
            v = [r["p50"] for r in floors if (r["model"], r["batch"]) == (model, batch)]
            lines.append(f"- {model} batch {batch}: {', '.join(f'{x:.3f}' for x in v)} "
                         f"(range {max(v) - min(v):.1%})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,efficientnet_b0,vgg16_bn")
    parser.add_argument("--targets", default="0.75,0.5,0.3")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--stat", default="p50", help="--latency-stat for every cell")
    parser.add_argument("--skip", default="", help="cells left out, as MODEL@BATCH,... (e.g. vgg16_bn@8)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="fresh re-measurements of every cell")
    parser.add_argument("--every", type=float, default=900, help="seconds between the starts of two rounds")
    parser.add_argument("--table", action="store_true", help="only write the table")
    parser.add_argument("--method", default=TAG, help="the tag of this protocol's rows (a new one re-runs every cell)")
    args = parser.parse_args()
    globals()["TAG"] = args.method
    RESULTS.mkdir(exist_ok=True)
    done = [json.loads(line) for line in RUNS.read_text().splitlines()] if RUNS.exists() else []
    cpu = cpu_description()

    def write():
        done = [json.loads(line) for line in RUNS.read_text().splitlines()]  # rows other runs appended too
        tags = [t for t in (TAG, *TAGS) if any(r.get("method") == t for r in done)]
        cpus = list(dict.fromkeys([cpu] + [r["cpu"] for r in done if r.get("cpu")]))  # this machine's first
        TABLE.write_text("\n".join(grid_table(done, t, c) for c in cpus for t in dict.fromkeys(tags)
                                   if any(r.get("method") == t and r.get("cpu") == c for r in done)) + "\n"
                         + table([r for r in done if not str(r.get("method", "")).startswith("issue32")]))

    if args.table:
        write()
        return
    skip = set(filter(None, args.skip.split(",")))
    seen = {(r["model"], r["target"], r["batch"], r["stat"]) for r in done
            if r.get("method") == TAG and r["kind"] == "prune" and r.get("cpu") == cpu}
    for batch in [int(b) for b in args.batches.split(",")]:
        for model in args.models.split(","):
            for target in [float(t) for t in args.targets.split(",")]:
                if (model, target, batch, args.stat) in seen or f"{model}@{batch}" in skip:
                    continue
                row = decided_cell(model, target, batch, args.stat)
                with RUNS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done.append(row)
                write()
                print(json.dumps({k: v for k, v in row.items() if k != "timings"}), flush=True)
    cells = [r for r in done if r.get("method") == TAG and r["kind"] == "prune" and r["exit"] == 0
             and r.get("cpu") == cpu and r["stat"] == args.stat and str(r["batch"]) in args.batches.split(",")
             and r["model"] in args.models.split(",")]
    cells = [c for c in cells if f"{c['model']}@{c['batch']}" not in skip]
    for round_ in range(args.rounds):
        # per cell: a cell (or noise floor) already re-measured in this round is not measured again
        measured = {(r["model"], r["target"], r["batch"]) for r in done if r.get("kind") == "remeasure"
                    and r.get("round") == round_ and r.get("cpu") == cpu and r.get("stat") == args.stat
                    and r.get("method") == TAG}
        todo = [c for c in cells if (c["model"], c["target"], c["batch"]) not in measured]
        floors = [c for c in cells if (c["model"], None, c["batch"]) not in measured]
        if not todo and not floors:
            continue
        started = time.time()
        rows = remeasure(todo, round_, args.runs, floors)
        with RUNS.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        done.extend(rows)
        write()
        if round_ + 1 < args.rounds:
            time.sleep(max(0.0, args.every - (time.time() - started)))
    write()


if __name__ == "__main__":
    main()
