"""Quality of pruning methods on real data, the ShrinkBench way.

    python benchmarks/quality.py                    # full grid (about an hour on 2 cores)
    python benchmarks/quality.py --seeds 0 --budgets 0.5 --criteria l1 --schedules oneshot   # a quick look

Protocol (../shared/seeds/003: same starting model, same fine-tuning budget, several seeds, select on
validation, report test):
- one dense ResNet-20 trained once on digits (the demo's cached model) is the start of every method;
- every method gets the same fine-tuning: --epochs of SGD (lr 0.02, cosine, plain cross-entropy, no
  distillation), the best epoch chosen on the validation split carved from training data;
- top-1 is measured on the held-out test split (359 images), mean +- std over --seeds;
- control: the pruned architecture (l1/uniform) trained from scratch for the same epochs.
Writes benchmarks/results/quality.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="0.5,0.25")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--criteria", default="random,l1,fpgm,taylor")
    parser.add_argument("--allocations", default="uniform,global")
    parser.add_argument("--schedules", default="oneshot,agp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/quality.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    from prunecli.config import BudgetTarget, PruneConfig
    from prunecli.cost import count_flops, count_params
    from prunecli.data import DataConfig, load_data
    from prunecli.demo import DENSE_RECIPE, dense_checkpoint
    from prunecli.finetune import FinetuneConfig, evaluate, fit
    from prunecli.load import load_model
    from prunecli.schedule import SCHEDULES, Context

    torch.set_num_threads(os.cpu_count() or 1)
    path, _ = dense_checkpoint()
    loaded = load_model(str(path))
    dense_flops = count_flops(loaded.model, loaded.example_input)
    dense_params = count_params(loaded.model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple, list] = {}
    started = time.perf_counter()

    def write() -> None:
        lines = [
            "# Quality on digits: top-1 after pruning and the same fine-tuning",
            "",
            f"Start: one dense ResNet-20 (prunecli.zoo:cifar_resnet, 16x16 input), trained once ({DENSE_RECIPE['epochs']} "
            f"epochs); dense test top-1 {dense_test['top1']:.2f}%. Every method: {args.epochs} fine-tuning epochs "
            "(SGD lr 0.02, cosine, cross-entropy, batch 64), best epoch selected on the validation split (144 images "
            "carved from training data), top-1 on the test split (359 images); mean +- std over seeds "
            f"{args.seeds}. Budgets are FLOPs fractions (FlopCounterMode); round_to 8 (preset).",
            "",
            "| budget | criterion | allocation | schedule | FLOPs ratio | params ratio | top-1 before fine-tune | top-1 (mean +- std) | n |",
            "|---:|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for key in sorted(rows, key=lambda k: (-k[0], k[1], k[2], k[3])):
            runs = rows[key]
            top1 = [r["top1"] for r in runs]
            sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {statistics.mean(r['flops'] for r in runs):.4f} | "
                         f"{statistics.mean(r['params'] for r in runs):.4f} | "
                         f"{statistics.mean(r['before'] for r in runs):.2f} | {statistics.mean(top1):.2f} +- {sd:.2f} | {len(runs)} |")
        lines += ["", f"Wall time so far: {time.perf_counter() - started:.0f} s."]
        out.write_text("\n".join(lines) + "\n")

    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for budget in budgets:
        for seed in seeds:
            data = load_data(DataConfig("digits"), loaded.input_shape, seed=seed)
            dense_test = evaluate(loaded.model, data.test)
            batches = [b for _, b in zip(range(8), data.train)]
            scratch_model = None
            for criterion in args.criteria.split(","):
                for allocation in args.allocations.split(","):
                    for schedule in args.schedules.split(","):
                        config = PruneConfig(flops=BudgetTarget("flops", budget), criterion=criterion,
                                             allocation=allocation, seed=seed, extra={"agp_steps": 3})
                        finetune = FinetuneConfig(epochs=args.epochs, lr=0.02, seed=seed, progress=False)
                        ctx = Context(loaded, config, finetune, data, batches, None, {})
                        outcome = SCHEDULES.get(schedule)(ctx)
                        result = evaluate(outcome.model, data.test)
                        rows.setdefault((budget, criterion, allocation, schedule), []).append({
                            "top1": result["top1"], "before": (outcome.accuracy_pruned or {"top1": float("nan")})["top1"],
                            "flops": count_flops(outcome.model, loaded.example_input) / dense_flops,
                            "params": count_params(outcome.model) / dense_params})
                        if (criterion, allocation, schedule) == ("l1", "uniform", "oneshot"):
                            scratch_model = copy.deepcopy(outcome.model)
                        print(budget, seed, criterion, allocation, schedule, f"{result['top1']:.2f}", flush=True)
                        write()
            if scratch_model is not None:  # "Rethinking the value of pruning": same architecture, fresh weights
                torch.manual_seed(seed)
                for m in scratch_model.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
                fit(scratch_model, data.train, data.val, FinetuneConfig(epochs=args.epochs, lr=0.02, seed=seed), None)
                result = evaluate(scratch_model, data.test)
                rows.setdefault((budget, "scratch (l1/uniform arch)", "-", "from scratch"), []).append({
                    "top1": result["top1"], "before": float("nan"),
                    "flops": count_flops(scratch_model, loaded.example_input) / dense_flops,
                    "params": count_params(scratch_model) / dense_params})
                write()


if __name__ == "__main__":
    main()
