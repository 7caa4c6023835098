"""Data-free `prunecli prune` against raw Torch-Pruning + export, side by side, and where prunecli's time goes.

For each model, alternating, each in a fresh process (imports counted, as a user pays them):

- ``raw``: import torch/torchvision/torch_pruning, build the model, Torch-Pruning's MetaPruner (L1 magnitude,
  one global ratio of 0.3, classifier ignored, which lands near half the FLOPs), prune, export with the
  TorchScript exporter (dynamic batch). No verification, no budget search, no report.
- ``prunecli``: ``prunecli prune torchvision:NAME --flops 0.5 --out DIR`` with its defaults (exact budget fit,
  ONNX checker + onnxruntime parity at batch 1 and 2, a 20-run dense-vs-pruned latency measurement, bundle).
- ``prunecli --no-latency``: the same without the latency measurement.

Wall time of the whole process, median of ``--repeats`` runs. prunecli's own stages come from its
report.json ``timings``. Results: ``benchmarks/results/export_time.md`` (raw runs in ``export_time_runs.jsonl``).

    python benchmarks/export_time.py            # about 6 min on 2 cores; run it alone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_description

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("resnet18", "resnet50", "mobilenet_v2")

RAW = """
import sys, torch, torchvision, torch_pruning as tp
name, out = sys.argv[1], sys.argv[2]
model = getattr(torchvision.models, name)().eval()
x = torch.randn(1, 3, 224, 224)
head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.3,
                              ignored_layers=head)
pruner.step()
macs, _ = tp.utils.count_ops_and_params(model, x)
torch.onnx.export(model, (x,), out, dynamo=False, input_names=["input"], output_names=["output"], opset_version=18,
                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
print(macs)
"""


def run(cmd: list[str], cwd: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr[-1000:]}")
    return wall, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs_file = RESULTS / "export_time_runs.jsonl"
    rows = []
    prunecli = [sys.executable, "-m", "prunecli", "prune"]
    for name in args.models.split(","):
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                raw_s, _ = run([sys.executable, "-c", RAW, name, f"{tmp}/raw.onnx"], tmp)
                ours_s, out = run([*prunecli, f"torchvision:{name}", "--flops", "0.5", "--out", f"{tmp}/o", "--json"], tmp)
                report = json.loads(out)
                quiet_s, out2 = run([*prunecli, f"torchvision:{name}", "--flops", "0.5", "--no-latency", "--out",
                                     f"{tmp}/q", "--json"], tmp)
            row = {"model": name, "repeat": repeat, "raw_s": raw_s, "prunecli_s": ours_s, "prunecli_no_latency_s": quiet_s,
                   "timings": report["timings"], "exporter": report["onnx"]["exporter"],
                   "flops_ratio": report["achieved"]["flops_ratio"], "cpu": cpu_description(),
                   "candidate_costs": report.get("budget_fit", {}).get("candidate_costs")}
            rows.append(row)
            with runs_file.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{name} #{repeat}: raw {raw_s:.1f}s, prunecli {ours_s:.1f}s, --no-latency {quiet_s:.1f}s "
                  f"({report['onnx']['exporter']})", flush=True)
    write_table(rows, args.repeats)


def write_table(rows: list[dict], repeats: int) -> None:
    med = lambda key, name: statistics.median(r[key] for r in rows if r["model"] == name)  # noqa: E731
    lines = [
        "# Data-free prune: prunecli against raw Torch-Pruning + export",
        "",
        f"Machine: {cpu_description()}, {platform.machine()}, {os.cpu_count()} cores, nothing else running; median of {repeats} runs, "
        "each a fresh process (imports included), the three commands alternating. Command: "
        "`python benchmarks/export_time.py`.",
        "",
        "| model | raw TP + TorchScript export (s) | prunecli prune (s) | ratio | prunecli --no-latency (s) | ratio | exporter |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    names = list(dict.fromkeys(r["model"] for r in rows))
    for name in names:
        raw, ours, quiet = med("raw_s", name), med("prunecli_s", name), med("prunecli_no_latency_s", name)
        exporter = next(r["exporter"] for r in rows if r["model"] == name)
        lines.append(f"| {name} | {raw:.1f} | {ours:.1f} | {ours / raw:.2f} | {quiet:.1f} | {quiet / raw:.2f} | {exporter} |")
    stages = sorted({k for r in rows for k in r["timings"]} - {"total_s"})
    lines += ["", "## Where prunecli's time goes (report.json timings, median s, default flags)", "",
              "| model | " + " | ".join(stages) + " | total in-process | process wall |",
              "|---|" + "---:|" * (len(stages) + 2)]
    for name in names:
        mine = [r for r in rows if r["model"] == name]
        cells = [statistics.median(r["timings"].get(k, 0.0) for r in mine) for k in stages]
        total = statistics.median(r["timings"]["total_s"] for r in mine)
        lines.append(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {total:.1f} | {med('prunecli_s', name):.1f} |")
    lines += ["", "The process wall time minus the in-process total is start-up: Python imports (torch, torchvision, "
              "Torch-Pruning, onnx, onnxruntime) and loading the model, as the raw script also pays."]
    (RESULTS / "export_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
