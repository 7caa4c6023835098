"""Fuzz `prunecli prune` with random CNNs (benchmarks/fuzznet.py) at random budgets.

Every run is a fresh `python -m prunecli prune` process with a time bound. Its outcome must be one of:

- ``ok``: exit 0, and the bundle checks out independently of the report: the model rebuilt from the bundle
  measures the FLOPs/params the report states, every budget holds (achieved <= target, within the tolerance
  below it), and ``model.onnx`` copied alone into another directory loads in onnxruntime and matches the
  rebuilt model;
- ``refused``: exit 1, 2 or 4 with exactly one ``error:`` line on stderr and no traceback.

Anything else is a finding: ``traceback``, ``hang`` (past the bound), ``bad_refusal`` (several lines, or exit 3),
``mismatch`` (a bundle whose reported budget is not what the model measures, or whose ONNX does not match).

Raw runs are appended to ``benchmarks/results/fuzz_runs.jsonl`` (resumable: done seeds are skipped);
the table goes to ``benchmarks/results/fuzz.md``.

    python benchmarks/fuzz.py --nets 200            # about 30 min on 2 cores, 2 runs in parallel
    python benchmarks/fuzz.py --table-only
    python benchmarks/fuzz.py --name layered --compare fuzz_runs.jsonl   # a second run of the same 200 nets, its
                                                                          # verdicts compared seed by seed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "fuzz_runs.jsonl"
TABLE = RESULTS / "fuzz.md"
FACTORY = ROOT / "benchmarks" / "fuzznet.py"
SHAPE = (1, 3, 32, 32)
TIMEOUT_S = 300


def budget_args(seed: int) -> list[str]:
    rng = random.Random(10_000 + seed)
    kind = rng.choice(["flops", "flops", "params", "both"])
    flops, params = round(rng.uniform(0.2, 0.9), 3), round(rng.uniform(0.2, 0.9), 3)
    args = []
    if kind in ("flops", "both"):
        args += ["--flops", str(flops)]
    if kind in ("params", "both"):
        args += ["--params", str(params)]
    args += ["--allocation", rng.choice(["uniform", "global"]), "--criterion", rng.choice(["l1", "l2", "fpgm", "bn", "random"])]
    return args


def check_bundle(bundle: Path, arch: str, report: dict) -> list[str]:
    """Problems found by measuring the bundle itself (empty list: it is what the report says)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import prunecli
    from prunecli.graph.cost import count_flops, count_params

    problems = []
    model = prunecli.load_bundle(bundle, arch=arch)
    x = torch.randn(*SHAPE)
    measured = {"flops": count_flops(model, x), "params": count_params(model)}
    tight = []  # with --flops and --params both must hold; the binding one lands within the tolerance
    for metric, b in report["budget"].items():
        if measured[metric] != b["achieved"]:
            problems.append(f"{metric}: report says {b['achieved']}, bundle measures {measured[metric]}")
        if not measured[metric] <= b["target"]:
            problems.append(f"{metric}: {measured[metric]} above target {b['target']}")
        tight.append(measured[metric] >= b["target"] * (1 - report["config"]["tolerance"]) - 1)
    if not any(tight):
        problems.append(f"no budget within the tolerance below its target: {measured} vs {report['budget']}")
    with tempfile.TemporaryDirectory() as alone:
        copy = Path(alone) / "model.onnx"
        shutil.copyfile(bundle / "model.onnx", copy)
        session = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
        batch = torch.randn(2, *SHAPE[1:])
        got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
        with torch.no_grad():
            expected = model(batch).numpy()
        if not np.allclose(got, expected, atol=1e-4, rtol=1e-3):
            problems.append(f"onnx alone differs from the rebuilt model by {float(np.abs(got - expected).max()):.3g}")
    return problems


def run_one(seed: int) -> dict:
    arch = f"{FACTORY}:build:seed={seed}"
    args = budget_args(seed)
    with tempfile.TemporaryDirectory(prefix="prunecli-fuzz-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "prunecli", "prune", arch, "--input-shape", ",".join(map(str, SHAPE)),
               *args, "--no-latency", "--json", "--out", str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "benchmarks")}
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"seed": seed, "args": args, "outcome": "hang", "wall_s": TIMEOUT_S}
        wall = time.perf_counter() - started
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        row = {"seed": seed, "args": args, "code": proc.returncode, "wall_s": round(wall, 2),
               "stderr": lines[-1][:300] if lines else ""}
        leftovers = sorted(p.name for p in Path(tmp).iterdir() if p.name != "out")
        if "Traceback" in proc.stderr:
            row["outcome"] = "traceback"
            row["stderr"] = proc.stderr[-1500:]
        elif proc.returncode == 0:
            report = json.loads(proc.stdout)
            row["achieved"] = {m: b["achieved_ratio"] for m, b in report["budget"].items()}
            row["criterion_fallbacks"] = report.get("criterion_fallbacks", [])
            try:
                problems = check_bundle(out, arch, report)
            except Exception as exc:  # noqa: BLE001 - a bundle that does not even load is a finding
                problems = [f"{type(exc).__name__}: {exc}"]
            row["outcome"] = "mismatch" if problems else "ok"
            if problems:
                row["problems"] = problems
        elif proc.returncode in (1, 2, 4) and len(lines) == 1 and lines[0].startswith("error: "):
            # one clean line, but one that names no cause of prunecli's own: an internal error to fix
            row["outcome"] = "internal_error" if "rerun with --debug" in lines[0] else "refused"
        else:
            row["outcome"] = "bad_refusal"
            row["stderr"] = proc.stderr[-1500:]
        if leftovers or (proc.returncode != 0 and out.exists()):
            row["outcome"] = "debris" if row["outcome"] in ("ok", "refused") else row["outcome"]
            row["leftovers"] = leftovers + (["out"] if proc.returncode != 0 and out.exists() else [])
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fuzznet import build

    row["net"] = build(seed).description
    return row


def load_runs() -> list[dict]:
    if not RUNS.exists():
        return []
    return [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]


def write_table(runs: list[dict]) -> str:
    from collections import Counter

    counts = Counter(r["outcome"] for r in runs)
    def kind(message: str) -> str:  # the message with numbers and paths blanked: one row per kind of refusal
        text = re.sub(r"/\S+", "PATH", message.removeprefix("error: "))
        return re.sub(r"\d[\d,.]*", "N", text)[:70]

    refusals = Counter(kind(r["stderr"]) if r["outcome"] == "refused" else None for r in runs)
    lines = [
        "# Fuzz: `prunecli prune` on random CNNs",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; each run a fresh process with OMP_NUM_THREADS=1, "
        f"bounded at {TIMEOUT_S} s, two at a time. Nets from `benchmarks/fuzznet.py` (seeds 0..{len(runs) - 1}), "
        "input 1x3x32x32, random FLOPs/params budgets in [0.2, 0.9], allocation uniform/global, criterion "
        "l1/l2/fpgm/bn/random. Raw runs: `fuzz_runs.jsonl`. Command: `python benchmarks/fuzz.py --nets 200`.",
        "",
        "| outcome | nets |",
        "|---|---:|",
    ]
    for outcome in ("ok", "refused", "internal_error", "traceback", "hang", "mismatch", "bad_refusal", "debris"):
        lines.append(f"| {outcome} | {counts.get(outcome, 0)} |")
    lines += ["", "`ok`: exit 0, the rebuilt bundle measures what the report says, budgets hold, model.onnx copied "
              "alone loads and matches. `refused`: exit 1/2/4 with one `error:` line that names the cause. "
              "`internal_error`: one clean line, but an unexpected exception (\"rerun with --debug\"). "
              "Others are findings.", "",
              "## Refusals by message", "", "| message (start) | nets |", "|---|---:|"]
    for message, n in refusals.most_common():
        if message is not None:
            lines.append(f"| {message} | {n} |")
    findings = [r for r in runs if r["outcome"] not in ("ok", "refused")]
    fallbacks = [r for r in runs if r.get("criterion_fallbacks")]
    if fallbacks:
        lines += ["", f"{len(fallbacks)} ok runs ranked some group by its root's filter L1 norm because the "
                  "criterion failed inside Torch-Pruning (report.json `criterion_fallbacks`)."]
    if findings:
        lines += ["", "## Findings", ""]
        lines += [f"- seed {r['seed']} ({r['outcome']}): {r.get('problems') or r.get('stderr', '')[:300]}" for r in findings]
    walls = sorted(r["wall_s"] for r in runs)
    if walls:
        lines += ["", f"Wall time per run: median {walls[len(walls) // 2]:.1f} s, max {walls[-1]:.1f} s."]
    text = "\n".join(lines) + "\n"
    TABLE.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--name", default=None, help="write fuzz_runs_NAME.jsonl / fuzz_NAME.md (another run)")
    parser.add_argument("--compare", default=None, help="runs file under results/ whose verdicts this run must repeat")
    args = parser.parse_args()
    global RUNS, TABLE
    if args.name:
        RUNS, TABLE = RESULTS / f"fuzz_runs_{args.name}.jsonl", RESULTS / f"fuzz_{args.name}.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        done = {r["seed"] for r in load_runs()}
        todo = [s for s in range(args.nets) if s not in done]
        with ThreadPoolExecutor(args.parallel) as pool, RUNS.open("a") as fh:
            for row in pool.map(run_one, todo):
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(f"seed {row['seed']:3d} {row['outcome']:10s} {row.get('wall_s', 0):6.1f}s {row.get('stderr', '')[:100]}",
                      flush=True)
    print(write_table(sorted(load_runs(), key=lambda r: r["seed"])))
    if args.compare:
        print(compare(RESULTS / args.compare))


def compare(other: Path) -> str:
    """Seed by seed: the same outcome, exit code, and (ok runs) the same achieved ratios, or (refusals) the same
    message with its numbers blanked. Appended to the table."""
    theirs = {r["seed"]: r for r in (json.loads(line) for line in other.read_text().splitlines() if line.strip())}
    ours = {r["seed"]: r for r in load_runs()}
    blank = lambda text: re.sub(r"[0-9][0-9.,e+-]*", "N", re.sub(r"/[^ ]*", "PATH", text or ""))  # noqa: E731
    differ = []
    for seed in sorted(set(ours) & set(theirs)):
        a, b = ours[seed], theirs[seed]
        same = (a["outcome"], a["code"]) == (b["outcome"], b["code"])
        if same and a["outcome"] == "ok":
            same = all(abs(a["achieved"][k] - b["achieved"].get(k, -1)) < 1e-9 for k in a["achieved"])
        elif same:
            same = blank(a.get("stderr")) == blank(b.get("stderr"))
        if not same:
            differ.append(f"| {seed} | {b['outcome']} {b['code']} | {a['outcome']} {a['code']} | {a.get('stderr', '')[:80]} |")
    text = (f"\n## Against {other.name}\n\n{len(set(ours) & set(theirs))} nets in both; "
            f"{len(differ)} with another verdict (outcome, exit code, achieved ratios or refusal message).\n")
    if differ:
        text += "\n| seed | before | now | now says |\n|---|---|---|---|\n" + "\n".join(differ) + "\n"
    with TABLE.open("a") as fh:
        fh.write(text)
    return text


if __name__ == "__main__":
    main()
