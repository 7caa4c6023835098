"""INT8 after pruning: dense fp32, pruned fp32 and pruned INT8 on Fashion-MNIST's ResNet-20 (top-1 through
onnxruntime, latency at batch 1 and 8).

    python benchmarks/int8.py                        # Fashion-MNIST ResNet-20 (needs dataset-fashion-mnist)
    python benchmarks/int8.py --torchvision resnet18,mobilenet_v2 --runs 50   # latency only (224x224)
    python benchmarks/int8.py --latency-budget 0.62 --seeds 0,1,2   # prune --latency 0.62, fp32 vs --quantize int8
    python benchmarks/int8.py --latency-budget 0.3 --torchvision resnet18   # the same, latency only

Every step is a prunecli command line (prune, quantize, export, bench), so the table is what a user gets. Raw
results are appended to ``benchmarks/results/int8_runs.jsonl`` and a finished step is skipped when the script is
run again; the table is ``benchmarks/results/int8.md``. Latency is measured with ``prunecli bench`` (interleaved
with its baseline in one process, 2 threads, p50 of --runs runs); run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DENSE = RESULTS / "quality_fmnist_dense_resnet20.pt"
FASHION = "fashion-mnist:/usr/share/datasets/fashion-mnist"


def prunecli(*args: str, allowed: tuple = (0,)) -> dict:
    cmd = [sys.executable, "-m", "prunecli", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in allowed:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    doc = json.loads(done.stdout) if "--json" in args and done.stdout.strip() else {}
    return {**doc, "exit_code": done.returncode, "stderr_tail": done.stderr[-500:]} if allowed != (0,) else doc


def load(path: Path) -> dict:
    runs = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            runs[row["step"]] = row
    return runs


def step(runs: dict, path: Path, name: str, fn) -> dict:
    if name in runs:
        return runs[name]
    row = {"step": name, **fn()}
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    runs[name] = row
    return row


def bench(model: Path, baseline: Path, batch: int, runs: int, shape: str | None = None) -> dict:
    extra = ["--input-shape", shape] if shape else []
    doc = prunecli("bench", model, "--baseline", baseline, "--batch", str(batch), "--threads", "2", "--runs",
                   str(runs), "--warmup", "10", *extra, "--json")
    return {"p50_ms": doc["model"]["p50_ms"], "baseline_p50_ms": doc["baseline"]["p50_ms"],
            "ratio_p50": doc["ratio"]["p50"], "runs": runs, "batch": batch}


def latencies(runs: dict, log: Path, tag: str, int8: Path, fp32: Path, dense: Path, bench_runs: int) -> None:
    """INT8 vs pruned fp32, INT8 vs dense and pruned fp32 vs dense, at batch 1 and 8 (each a resumable step)."""
    pairs = {"int8_vs_fp32": (int8, fp32), "int8_vs_dense": (int8, dense), "fp32_vs_dense": (fp32, dense)}
    for batch in (1, 8):
        for name, (model, baseline) in pairs.items():
            step(runs, log, f"{tag}_latency_b{batch}_{name}", lambda: bench(model, baseline, batch, bench_runs))


def _ratio(runs: dict, tag: str, key: str) -> str:
    value = runs.get(f"{tag}_latency_{key}", {}).get("ratio_p50")
    return f"{value:.3f}" if isinstance(value, float) else "-"


def _rr(runs: dict, tag: str) -> str:
    q = runs.get(f"{tag}_reduce_range", {}).get("quantize")
    return f"{q['accuracy']['int8_top1']:.2f}" if q else "-"


LATENCY_KEYS = ("b1_int8_vs_fp32", "b8_int8_vs_fp32", "b1_int8_vs_dense", "b8_int8_vs_dense", "b1_fp32_vs_dense",
                "b8_fp32_vs_dense")


def fashion(work: Path, runs: dict, log: Path, epochs: int, seed: int, bench_runs: int) -> None:
    pruned, int8, dense = work / f"pruned_s{seed}", work / f"int8_s{seed}", work / "dense.onnx"
    tag = f"fmnist_resnet20_s{seed}"
    if not dense.is_file():
        prunecli("export", DENSE, "--out", dense, "--force")
    if not (pruned / "recipe.json").is_file():
        report = prunecli("prune", DENSE, "--flops", "0.5", "--data", FASHION, "--epochs", str(epochs), "--seed",
                          str(seed), "--no-latency", "--out", pruned, "--force", "--json")
        (work / f"{tag}_report.json").write_text(json.dumps(report))
    report = json.loads((pruned / "report.json").read_text())
    q = step(runs, log, f"{tag}_quantize", lambda: {"quantize": prunecli(
        "quantize", pruned, "--data", FASHION, "--out", int8, "--force", "--json")})["quantize"]
    step(runs, log, f"{tag}_accuracy", lambda: {
        "flops_ratio": report["budget"]["flops"]["achieved_ratio"],
        "pytorch_finetuned_top1": (report.get("accuracy") or {}).get("finetuned", {}).get("top1")
        if isinstance((report.get("accuracy") or {}).get("finetuned"), dict) else None,
        "fp32_top1": q["accuracy"]["fp32_top1"], "int8_top1": q["accuracy"]["int8_top1"],
        "agreement": q["accuracy"]["agreement"], "kept": q["kept"], "types": q["types"],
        "sizes_bytes": {"dense": dense.stat().st_size, "pruned": (pruned / "model.onnx").stat().st_size,
                        "int8": (int8 / "model.int8.onnx").stat().st_size if q["kept"] == "int8" else None}})
    # the model an AVX2-only (no VNNI) deployment gets: 7-bit weights, which cannot saturate there, so its top-1
    # measured here is its top-1 there (its latency there is not measured)
    step(runs, log, f"{tag}_reduce_range", lambda: {"quantize": prunecli(
        "quantize", pruned, "--data", FASHION, "--reduce-range", "on", "--max-quant-drop", "100",
        "--out", work / f"int8rr_s{seed}", "--force", "--json")})
    if q["kept"] != "int8":
        return
    latencies(runs, log, tag, int8 / "model.int8.onnx", pruned / "model.onnx", dense, bench_runs)


def torchvision_latency(name: str, work: Path, runs: dict, log: Path, bench_runs: int) -> None:
    """Latency only: a random-init torchvision model pruned to --flops 0.5, calibrated on synthetic images (their
    top-1 means nothing, so the guard is off: --max-quant-drop 100)."""
    spec, tag = f"torchvision:{name}", f"tv_{name}"
    pruned, int8, dense = work / f"{tag}_pruned", work / f"{tag}_int8", work / f"{tag}_dense.onnx"
    if not dense.is_file():
        prunecli("export", spec, "--out", dense, "--force")
    if not (pruned / "recipe.json").is_file():
        prunecli("prune", spec, "--flops", "0.5", "--no-latency", "--out", pruned, "--force", "--json")
    report = json.loads((pruned / "report.json").read_text())
    q = step(runs, log, f"{tag}_quantize", lambda: {"quantize": prunecli(
        "quantize", pruned, "--data", "synthetic:512", "--max-quant-drop", "100", "--out", int8, "--force",
        "--json")})["quantize"]
    step(runs, log, f"{tag}_sizes", lambda: {
        "flops_ratio": report["budget"]["flops"]["achieved_ratio"], "types": q["types"],
        "sizes_bytes": {"dense": dense.stat().st_size, "pruned": (pruned / "model.onnx").stat().st_size,
                        "int8": (int8 / "model.int8.onnx").stat().st_size}})
    latencies(runs, log, tag, int8 / "model.int8.onnx", pruned / "model.onnx", dense, bench_runs)


FMNIST_BUDGET = {"model": DENSE, "label": "ResNet-20 (Fashion-MNIST)", "data": FASHION, "shape": None, "batch": 8,
                 "extra": []}


def torchvision_budget(name: str) -> dict:
    """Latency only: a random-init torchvision model at 128x128, batch 1, calibrated on synthetic images (their
    top-1 means nothing: the guard is off and no accuracy is reported)."""
    return {"model": f"torchvision:{name}", "label": f"{name} (random init, 128x128)", "data": "synthetic:64",
            "shape": "1,3,128,128", "batch": 1, "extra": ["--max-quant-drop", "100"], "suffix": f"_tv{name}"}


def latency_budget(target: float, work: Path, runs: dict, log: Path, epochs: int, seed: int, bench_runs: int,
                   setup: dict = FMNIST_BUDGET) -> None:
    """`prune --latency T` (the setup's batch), fp32 and with --quantize int8 (same model, seed, data and
    fine-tuning), then each deployed artifact re-measured by a fresh `prunecli bench --max-latency-ratio T`."""
    suffix = setup.get("suffix", "")
    shape = ["--input-shape", setup["shape"]] if setup["shape"] else []
    dense = work / f"dense{suffix}.onnx"
    if not dense.is_file():
        prunecli("export", setup["model"], *shape, "--out", dense, "--force")
    for variant in ("fp32", "int8"):
        tag = f"latbudget{target:g}_{variant}_s{seed}{suffix}"
        out = work / tag
        extra = ["--quantize", "int8", *setup["extra"]] if variant == "int8" else []

        def run() -> dict:
            report = prunecli("prune", setup["model"], *shape, "--latency", str(target), "--latency-batch",
                              str(setup["batch"]), "--threads", "2", "--data", setup["data"], "--epochs", str(epochs),
                              "--seed", str(seed), *extra, "--out", out, "--force", "--json", allowed=(0, 1, 2))
            if not report.get("budget"):
                return {"exit_code": report["exit_code"], "stderr_tail": report["stderr_tail"], "label": setup["label"]}
            lat, int8 = report["budget"]["latency"], report.get("int8") or {}
            finetuned = (report.get("accuracy") or {}).get("finetuned") or {}
            return {"exit_code": report["exit_code"], "label": setup["label"], "batch": setup["batch"],
                    "flops_ratio": report["achieved"]["flops_ratio"],
                    "params_ratio": report["achieved"]["params_ratio"], "artifact": lat["artifact"],
                    "measured": lat["measured"], "ci95": lat["ci95"], "met": lat["met"],
                    "int8_factor": lat.get("int8_factor"), "probes": len(lat["fit_probes"]),
                    "pytorch_top1": finetuned.get("top1") if setup["data"] == FASHION else None,
                    "int8_top1": (int8.get("accuracy") or {}).get("int8_top1") if setup["data"] == FASHION else None,
                    "int8_kept": int8.get("kept"), "timings": report["timings"]}

        row = step(runs, log, f"{tag}_prune", run)
        if row.get("artifact"):
            step(runs, log, f"{tag}_gate2", lambda: gate(out / row["artifact"], dense, setup, bench_runs, target))


def gate(model: Path, dense: Path, setup: dict, bench_runs: int, target: float) -> dict:
    """One `prunecli bench --max-latency-ratio T` run: its ratio and its verdict (exit 0 or 1) come from the same
    measurement."""
    doc = prunecli("bench", model, "--baseline", dense, "--batch", str(setup["batch"]), "--threads", "2", "--runs",
                   str(bench_runs), "--warmup", "10", "--max-latency-ratio", str(target),
                   *(["--input-shape", setup["shape"]] if setup["shape"] else []), "--json", allowed=(0, 1))
    return {"p50_ms": doc["model"]["p50_ms"], "baseline_p50_ms": doc["baseline"]["p50_ms"],
            "ratio_p50": doc["ratio"]["p50"], "runs": bench_runs, "batch": setup["batch"],
            "passed": doc["exit_code"] == 0}


def latency_budget_table(runs: dict) -> list[str]:
    rows = sorted(n[: -len("_prune")] for n in runs if n.startswith("latbudget") and n.endswith("_prune"))
    if not rows:
        return []
    lines = ["", "Latency budget on the deployed artifact (`prune --latency T --latency-batch B --threads 2`; fp32 and "
             "`--quantize int8` from the same model with the same seed and data; with INT8 the fit times INT8 "
             "candidates against the dense fp32 model). ResNet-20: `--epochs 2` on Fashion-MNIST, top-1 on the 10,000 "
             "test images (fp32 rows by PyTorch, ONNX parity verified; INT8 rows through onnxruntime). torchvision "
             "rows: random init, synthetic calibration, no fine-tuning, no accuracy. `gate`: a fresh "
             "`prunecli bench --batch B --max-latency-ratio T` of the artifact against the dense ONNX after the prune:",
             "",
             "| model | batch | T | variant | seed | exit | FLOPs ratio | params ratio | measured (95% CI) | probes | "
             "INT8 factor | top-1 | gate ratio | gate |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    refused: dict = {}
    for tag in rows:
        r, gated_run = runs[f"{tag}_prune"], runs.get(f"{tag}_gate2", {})
        target, variant, seed = tag[len("latbudget"):].split("_")[:3]
        head = f"| {r.get('label', FMNIST_BUDGET['label'])} | {r.get('batch', 8)} | {target} | {variant} | {seed[1:]}"
        if "measured" not in r:
            lines.append(f"{head} | {r['exit_code']} | - | - | - | - | - | - | - | - |")
            refused.setdefault(r["stderr_tail"].strip().split("; give")[0], []).append(f"{variant} seed {seed[1:]}")
            continue
        top1 = r["int8_top1"] if r["artifact"].endswith("int8.onnx") else r["pytorch_top1"]
        top1 = f"{top1:.2f}" if top1 is not None else "-"
        factor = f"{r['int8_factor']:.3f}" if r.get("int8_factor") else "-"
        gated = (f"{gated_run['ratio_p50']:.3f} | {'pass' if gated_run['passed'] else 'FAIL'}" if gated_run
                 else "- | -")
        lines.append(f"{head} | {r['exit_code']} | {r['flops_ratio']:.3f} | "
                     f"{r['params_ratio']:.3f} | {r['measured']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | "
                     f"{r['probes']} | {factor} | {top1} | {gated} |")
    for message, which in refused.items():
        lines += ["", f"Refused ({', '.join(which)}): `{message}`"]
    if any(runs[f"{tag}_prune"].get("exit_code") == 1 for tag in rows):
        lines += ["", "Exit 1: the final check of the deployed artifact measured above the target, so the run failed "
                  "(the bundle is written, as for any missed latency budget). For the resnet18 INT8 seed-1 row the "
                  "fit's accepted candidate (same structure) measured 0.291; re-made by hand, that candidate and the "
                  "final INT8 model have identical optimised graphs and measured 1.019 and 0.998 of each other in two "
                  "`bench` runs: at batch 1 (~1 ms) on this 2-core VM two measurements of one pair differ by up to "
                  "~2%, more than the fit's 1.5% margin (the noise issue 17 is blocked on)."]
    return lines


def table(runs: dict) -> str:
    from prunecli.runtime.timing import cpu_model

    lines = [
        "# INT8 after pruning (onnxruntime static quantisation through `prunecli quantize`)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; onnxruntime CPU, 2 threads; latency: `prunecli bench "
        "--baseline` (interleaved in one process, 10 warm-up then 200 timed runs per model, p50 ratio). ResNet-20 "
        "pruned with `--flops 0.5 --epochs 2` (l1, uniform; full training split) from the committed dense model "
        "(quality_fmnist_dense_resnet20.pt), then `prunecli quantize` (minmax, 8 calibration batches). Top-1 through onnxruntime on "
        "the 10,000 Fashion-MNIST test images; the INT8 guard judged on validation. Raw: `int8_runs.jsonl`.",
        "",
        "| model | seed | FLOPs ratio | fp32 top-1 | INT8 top-1 | agreement % | INT8 top-1, reduce_range on | "
        "types (reduce_range) | "
        "size dense / pruned / INT8 KB | b1 INT8/fp32 | b8 INT8/fp32 | b1 INT8/dense | b8 INT8/dense | "
        "b1 fp32/dense | b8 fp32/dense |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in sorted(runs.items()):
        if not name.endswith("_accuracy"):
            continue
        tag = name[: -len("_accuracy")]
        seed = tag.rsplit("_s", 1)[1]
        sizes = row["sizes_bytes"]
        kb = " / ".join(f"{sizes[k] / 1024:.0f}" if sizes[k] else "-" for k in ("dense", "pruned", "int8"))
        types = row["types"]
        lines.append(
            f"| ResNet-20 (Fashion-MNIST) | {seed} | {row['flops_ratio']:.4f} | {row['fp32_top1']:.2f} | "
            f"{row['int8_top1']:.2f} | {row['agreement']:.2f} | {_rr(runs, tag)} | {types['activation']}/{types['weight']} "
            f"({types['reduce_range']}: {types['isa']}) | {kb} | "
            + " | ".join(_ratio(runs, tag, k) for k in LATENCY_KEYS) + " |")
    tv = sorted(n[: -len("_sizes")] for n in runs if n.startswith("tv_") and n.endswith("_sizes"))
    if tv:
        lines += ["", "Latency only (random-init torchvision models at 224x224, `prune --flops 0.5`, INT8 calibrated on "
                  "synthetic images: no accuracy is claimed; runs per model as in the raw rows):", "",
                  "| model | FLOPs ratio | size dense / pruned / INT8 KB | b1 INT8/fp32 | b8 INT8/fp32 | b1 INT8/dense | "
                  "b8 INT8/dense | b1 fp32/dense | b8 fp32/dense |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for tag in tv:
            row = runs[f"{tag}_sizes"]
            kb = " / ".join(f"{row['sizes_bytes'][k] / 1024:.0f}" for k in ("dense", "pruned", "int8"))
            lines.append(f"| {tag[3:]} | {row['flops_ratio']:.4f} | {kb} | "
                         + " | ".join(_ratio(runs, tag, k) for k in LATENCY_KEYS) + " |")
    lines += latency_budget_table(runs)
    first = next((r for n, r in runs.items() if n.endswith("_accuracy")), None)
    if first:
        lines += ["", f"Types: {first['types']['reason']}. `reduce_range on` (`quantize --reduce-range on`): the "
                  "7-bit weights an AVX2-only deployment gets; they cannot saturate there, so the top-1 measured here "
                  "is its top-1 there (not its latency)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs after pruning (full training split)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and batch")
    parser.add_argument("--work", default="/tmp/prunecli-int8", help="bundles and ONNX files (not committed)")
    parser.add_argument("--torchvision", default="", help="latency only: comma-separated torchvision models")
    parser.add_argument("--latency-budget", type=float, default=None,
                        help="prune --latency T (batch 8) fp32 vs --quantize int8, per seed")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    log = RESULTS / "int8_runs.jsonl"
    runs = load(log)
    if not args.table_only:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        if args.latency_budget is not None:
            setups = [torchvision_budget(n) for n in args.torchvision.split(",")] if args.torchvision else [FMNIST_BUDGET]
            for setup in setups:
                for seed in [int(s) for s in args.seeds.split(",")]:
                    latency_budget(args.latency_budget, work, runs, log, args.epochs if setup is FMNIST_BUDGET else 0,
                                   seed, args.runs, setup)
        elif args.torchvision:
            for name in args.torchvision.split(","):
                torchvision_latency(name, work, runs, log, args.runs)
        else:
            for seed in [int(s) for s in args.seeds.split(",")]:
                fashion(work, runs, log, args.epochs, seed, args.runs)
    (RESULTS / "int8.md").write_text(table(runs))
    print(table(runs))


if __name__ == "__main__":
    main()
