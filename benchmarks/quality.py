"""Quality of pruning methods on real data, the ShrinkBench way.

    python benchmarks/quality.py                    # full grid (about an hour on 2 cores)
    python benchmarks/quality.py --seeds 0 --budgets 0.5 --criteria l1 --schedules oneshot   # a quick look
    python benchmarks/quality.py --table-only       # rebuild the table from the recorded runs
    python benchmarks/quality.py --dataset fashion-mnist --model resnet20   # Fashion-MNIST (see FASHION below)
    python benchmarks/quality.py --dataset fashion-mnist --plot-only        # the plot of top-1 against FLOPs

Fashion-MNIST (``apt-get install dataset-fashion-mnist``; --data-dir, default /usr/share/datasets/fashion-mnist):
two dense models, each trained once on the whole training split (54,000 images; 6,000 held out for validation)
at the native 28x28, one grey channel, and cached: the demo's CIFAR ResNet-20 (prunecli:cifar_resnet) and a
VGG-style plain network whose late layers are far wider than it needs (prunecli:plain_vgg). To fit the grid on
2 CPU cores every pruning run trains on a fixed 12,000-image subset of the training split (--train-subset; the same
subset for every method and seed); validation (6,000) and test (all 10,000 t10k images) stay whole.

Protocol (../shared/seeds/003: same starting model, same fine-tuning budget, several seeds, select on
validation, report test):
- one dense ResNet-20 trained once on digits (the demo's cached model) is the start of every method;
- every method gets the same training budget after the dense model: --epochs of SGD (lr 0.02, cosine,
  plain cross-entropy, no distillation); a method that spends epochs before pruning (the learned
  allocator's search) takes them out of that budget; the best epoch is chosen on the validation split
  carved from training data;
- top-1 is measured on the held-out test split (359 images), mean +- std over --seeds; every run builds its
  own data loaders, so a seed fixes the data order for every method and a run repeats exactly;
- controls: the pruned architecture (l1/uniform) trained from scratch, for the same epochs and for the
  dense model's 30 epochs ("Rethinking the value of network pruning"); the learned allocator's counts on the
  dense weights with all the epochs of fine-tuning (its search not counted), which judges the learned
  allocation apart from the training its search does.
Every run is appended to benchmarks/results/quality_runs.jsonl (a run already recorded there is skipped,
so the grid resumes and new methods add rows); the table goes to benchmarks/results/quality.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

SCRATCH = "scratch (l1/uniform arch)"
# the learned allocator keeps, in every group, the channels with the highest BatchNorm |gamma| on its searched weights:
# --criterion does not enter, so it runs once per seed, as oneshot (its search is itself gradual)
SEARCHED = "gamma (searched weights)"
# control: the learned counts applied to the dense weights (channels by l1), fine-tuned for all --epochs, the search
# not counted; it separates what the learned allocation is worth from what the search's training is worth
LEARNED_ARCH = "learned counts, dense weights"


# learned:VARIANT in --allocations: the learned allocator with other search settings, tuned on validation
# (Learned fields; "epochs" is the search's share of --epochs)
LEARNED_VARIANTS = {
    "search1": {"epochs": 1},  # one search epoch of the five, four of fine-tuning
    "search3": {"epochs": 3},
    "fd4": {"fd_groups": 4},  # loss slopes of 4 groups per step, in rotation (about 1/3 of the forwards on ResNet-20)
    "ste": {"estimator": "ste"},  # DSA's straight-through estimator: one backward per step, no finite differences
    "slow": {"target_fraction": 0.9},  # the target reaches the budget at 90% of the search (default 50%)
}

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_SHAPE = (1, 1, 28, 28)
FASHION_MODELS = {  # name -> (arch, what the table calls it)
    "resnet20": ("prunecli:cifar_resnet:depth=20,width=16,num_classes=10,in_channels=1", "CIFAR ResNet-20 (width 16)"),
    "vgg": ("prunecli:plain_vgg:width=8,num_classes=10,in_channels=1",
            "plain VGG (16,16,M,32,32,M,64,128,M,256,256; global pool, one linear layer)"),
}
# the dense models: SGD momentum 0.9, lr 0.1 cosine with warmup, weight decay 5e-4, batch 128, no augmentation
FASHION_RECIPE = {"epochs": 10, "lr": 0.1, "optimizer": "sgd", "weight_decay": 5e-4, "seed": 0, "batch_size": 128}


def _key(run: dict) -> tuple:
    return (run.get("model", "resnet20"), run.get("dense"), run["budget"], run["criterion"], run["allocation"], run["schedule"],
            run["epochs"], run["seed"])


FASHION_DENSE = "quality_fmnist_dense_{model}.pt"  # beside the table (benchmarks/results/), whatever --out says


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fashion_dense(model: str, data_dir: str, out: Path):
    """(path of the trained dense Fashion-MNIST model, its test top-1, its training seconds, its sha256 prefix).

    The dense models are committed (benchmarks/results/quality_fmnist_dense_MODEL.pt, weights_only checkpoints of
    about 1-4 MB): training is not bit-reproducible across CPUs, so a later session on another machine must start
    from the very same weights for its runs to join the table. Trained here on first use only."""
    import torch

    from prunecli.models.arch import build_arch
    from prunecli.train.data import DataConfig, load_data
    from prunecli.train.finetune import FinetuneConfig, evaluate, fit

    path = out.with_name(FASHION_DENSE.format(model=model))
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return path, saved["test"]["top1"], saved["train_s"], _sha(path)
    arch = FASHION_MODELS[model][0]
    recipe = FASHION_RECIPE
    torch.manual_seed(recipe["seed"])
    net = build_arch(arch)
    data = load_data(DataConfig(f"fashion-mnist:{data_dir}", batch_size=recipe["batch_size"]), FASHION_SHAPE,
                     seed=recipe["seed"])
    t0 = time.perf_counter()
    history = fit(net, data.train, data.val, FinetuneConfig(
        epochs=recipe["epochs"], lr=recipe["lr"], optimizer=recipe["optimizer"], weight_decay=recipe["weight_decay"],
        seed=recipe["seed"], progress=False), None).history
    train_s = time.perf_counter() - t0
    test = evaluate(net, data.test)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    torch.save({"arch": arch, "state_dict": net.state_dict(), "input_shape": list(FASHION_SHAPE),
                "trained_on": f"fashion-mnist ({len(data.train.dataset)} training images)", "recipe": recipe,
                "val": evaluate(net, data.val), "test": test, "train_s": train_s,
                "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
                "history": json.dumps(history)}, tmp)
    os.replace(tmp, path)
    print(f"dense {model}: test top-1 {test['top1']:.2f}% after {train_s:.0f} s", flush=True)
    return path, test["top1"], train_s, _sha(path)


def load_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def setup_dense():
    """Every thread to torch, the demo's dense model (trained once, cached) and what every table states of it:
    (loaded model, its FLOPs, header with dense test top-1, threads and machine)."""
    import torch

    from prunecli.artifacts.load import load_model
    from prunecli.graph.cost import count_flops
    from prunecli.pipeline.demo import dense_checkpoint
    from prunecli.train.data import DataConfig, load_data
    from prunecli.train.finetune import evaluate

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    path, _ = dense_checkpoint()
    loaded = load_model(str(path))
    dense_test = evaluate(loaded.model, load_data(DataConfig("digits"), loaded.input_shape, seed=0).test)
    header = {"dense_top1": dense_test["top1"], "threads": threads,
              "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"}
    return loaded, count_flops(loaded.model, loaded.example_input), header


def write_table(runs: list[dict], out: Path, header: dict) -> None:
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault(_key(run)[:5], []).append(run)
    lines = [
        "# Quality on digits: top-1 after pruning and the same training budget",
        "",
        f"Start: one dense ResNet-20 (prunecli:cifar_resnet, 16x16 input) trained once "
        f"({header['dense_epochs']} epochs); dense test top-1 {header['dense_top1']:.2f}%. Every method gets "
        "the same epochs after the dense model (column `epochs`; SGD lr 0.02, cosine, cross-entropy, batch 64; "
        "the learned allocator's search epochs count against them), the best epoch selected on the validation "
        "split (144 images carved from training data); top-1 on the test split (359 images), mean +- std over "
        "seeds. Budgets are FLOPs fractions (FlopCounterMode FLOPs, not MACs); round_to 8 (preset). "
        "`wall s` is the mean wall time of one run (pruning decision, including a sensitivity scan or the learned "
        "search, + fine-tuning; a scan reused from the cache is counted at its original cost) on "
        f"{header['machine']}, {header['threads']} threads, nothing else running. Every run gets fresh data loaders, "
        "so at a given seed every method sees the same data order, and a run repeats exactly. With 359 test "
        "images one image is 0.28 points: differences below about 0.5 are within the seeds' spread. Every run records "
        "its conv widths in the raw runs, so a plan that changes at equal FLOPs shows. The learned allocator keeps "
        "each group's channels with the highest BatchNorm |gamma| on its searched weights (criterion `gamma (searched "
        f"weights)`); `{LEARNED_ARCH}` is a control: the learned counts applied to the dense weights (channels by "
        "l1) and fine-tuned for all the epochs, its search not counted, to tell the allocation from the search's "
        "training.",
        "",
        "| budget | criterion | allocation | schedule | epochs | FLOPs ratio | params ratio | top-1 before fine-tune "
        "| top-1 (mean +- std) | seeds | wall s |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(groups, key=lambda k: (-k[0], k[1] == SCRATCH, k[1], k[2], k[3], k[4])):
        rs = groups[key]
        top1 = [r["top1"] for r in rs]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        before = [r["before"] for r in rs if r["before"] is not None]
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {statistics.mean(r['flops'] for r in rs):.4f} | "
            f"{statistics.mean(r['params'] for r in rs):.4f} | "
            f"{statistics.mean(before):.2f} | " if before else
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {statistics.mean(r['flops'] for r in rs):.4f} | "
            f"{statistics.mean(r['params'] for r in rs):.4f} | - | "
        )
        lines[-1] += (f"{statistics.mean(top1):.2f} +- {sd:.2f} | {','.join(str(r['seed']) for r in rs)} | "
                      f"{statistics.mean(r.get('total_s', r['wall_s']) for r in rs):.0f} |")
    lines += ["", "Raw runs: quality_runs.jsonl (one line per run and seed)."]
    out.write_text("\n".join(lines) + "\n")


def fashion_setup(model: str, data_dir: str, train_subset: int, threads: int, out: Path):
    """(loaded dense model, its FLOPs, table header, fresh_data(seed)) for Fashion-MNIST: the training split's
    fixed subset (the same for every method and seed), validation and test whole."""
    import torch

    from prunecli.artifacts.load import load_model
    from prunecli.graph.cost import count_flops
    from prunecli.train.data import SPLIT_SEED, DataConfig, Loaders, _loaders, load_data

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    path, dense_top1, train_s, dense_sha = fashion_dense(model, data_dir, out)
    loaded = load_model(str(path))
    config = DataConfig(f"fashion-mnist:{data_dir}", batch_size=64)
    full = load_data(config, loaded.input_shape, seed=0)
    train = full.train.dataset
    if train_subset and train_subset < len(train):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED))
        train = torch.utils.data.Subset(train, order[:train_subset].tolist())
    val, test = full.val.dataset, full.test.dataset

    def fresh_data(seed: int):
        data = Loaders(*_loaders(train, val, test, config, seed), num_classes=10, name=config.spec)
        return data, [b for _, b in zip(range(8), data.train)]

    header = {"dense_top1": dense_top1, "dense_train_s": train_s, "threads": threads, "model": model,
              "dense_sha256": dense_sha, "dense_file": path.name,
              "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
              "sizes": (len(train), len(val), len(test)), "dense_val_top1": evaluate_val(loaded.model, full.val)}
    return loaded, count_flops(loaded.model, loaded.example_input), header, fresh_data


def evaluate_val(model, loader) -> float:
    from prunecli.train.finetune import evaluate

    return evaluate(model, loader)["top1"]


def _sem(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def current_runs(runs: list[dict], headers: dict, model: str) -> list[dict]:
    """The runs of ``model`` that started from its current dense weights (runs from an earlier dense model, trained
    on another machine, stay in the JSONL but join no table)."""
    sha = headers.get(model, {}).get("dense_sha256")
    return [r for r in runs if r.get("model") == model and r.get("dense") == sha]


def write_fashion_table(runs: list[dict], out: Path, headers: dict) -> None:
    """The Fashion-MNIST table: one section per model, then learned against uniform and global per budget."""
    lines = [
        "# Quality on Fashion-MNIST: test top-1 after pruning and the same training budget",
        "",
        "Protocol: every method starts from the same dense model (trained once, cached) and gets the same training "
        f"after it: {FASHION_PRUNE_EPOCHS_TEXT}. Budgets are FLOPs fractions (FlopCounterMode FLOPs, not MACs; one "
        "multiply-add is 2 FLOPs), channels by l1 except `learned`, which keeps each group's channels with the highest "
        "BatchNorm |gamma| on its searched weights; round_to from the preset (8 for the CIFAR ResNet; plain_vgg has none: 1), halved where a budget cannot be "
        "reached with it "
        "(ResNet-20 at 0.1 uses 4: with 8 its residual streams keep 8 of 16 channels and 0.117 is the floor; each run "
        "records its round_to). Test top-1 is on the whole t10k test set "
        "(10,000 images: one image is 0.01 points), mean +- std and the standard error (se) over seeds; `val top-1` "
        "is of the selected epoch on the validation split carved from training (6,000 images), which selects "
        "everything; test selects nothing. "
        "`wall s` is one run's mean wall time (pruning decision including a sensitivity scan or the learned search, "
        "fine-tuning and evaluation) in one process with the torch threads the model's header states; with 1 thread, "
        "the two models' grids ran side by side, one process per core, and nothing else.",
        "",
    ]
    for model in FASHION_MODELS:
        header = headers.get(model)
        mine = current_runs(runs, headers, model)
        if header is None and not mine:
            continue
        if header is not None:
            n_train, n_val, n_test = header["sizes"]
            lines += [f"## {model}: {FASHION_MODELS[model][1]}", "",
                      f"Dense: `{FASHION_MODELS[model][0]}`, 28x28x1, trained {FASHION_RECIPE['epochs']} epochs on "
                      f"the whole training split ({header['dense_train_s']:.0f} s); dense val top-1 "
                      f"{header['dense_val_top1']:.2f}%, **test top-1 {header['dense_top1']:.2f}%**. Pruning runs "
                      f"train on {n_train} images, validate on {n_val}, test on {n_test}; "
                      f"{header['machine']}, {header['threads']} torch threads.", ""]
        lines += ["| budget | allocation | criterion | epochs | FLOPs ratio | params ratio | top-1 before fine-tune | "
                  "val top-1 (mean +- se) | test top-1 (mean +- std) | se | seeds | wall s |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        groups: dict[tuple, list] = {}
        for run in mine:
            groups.setdefault((run["budget"], run["allocation"], run["criterion"], run["epochs"]), []).append(run)
        for key in sorted(groups, key=lambda k: (-k[0], k[2] == SCRATCH, k[1], k[2])):
            rs = groups[key]
            top1 = [r["top1"] for r in rs]
            before = [r["before"] for r in rs if r.get("before") is not None]
            val = [r["val_top1"] for r in rs]
            lines.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {statistics.mean(r['flops'] for r in rs):.4f} | "
                f"{statistics.mean(r['params'] for r in rs):.4f} | "
                f"{f'{statistics.mean(before):.2f}' if before else '-'} | {statistics.mean(val):.2f} +- {_sem(val):.2f} | "
                f"{statistics.mean(top1):.2f} +- {statistics.stdev(top1) if len(top1) > 1 else 0:.2f} | {_sem(top1):.2f} | "
                f"{','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | "
                f"{statistics.mean(r.get('total_s', r['wall_s']) for r in rs):.0f} |")
        lines += ["", "Learned against uniform and global (l1), test top-1: the difference of means and the larger of "
                  "the two standard errors; `beats` when the difference exceeds it.", "",
                  "| budget | learned - uniform | learned - global | larger se | beats both | val: learned - uniform | "
                  "val: learned - global |", "|---:|---:|---:|---:|---|---:|---:|"]
        for budget in sorted({k[0] for k in groups}, reverse=True):
            pick = lambda alloc, crit: next((rs for k, rs in groups.items()  # noqa: E731
                                             if k[0] == budget and k[1] == alloc and k[2] == crit), None)
            learned, uniform, global_ = pick("learned", SEARCHED), pick("uniform", "l1"), pick("global", "l1")
            if not (learned and uniform and global_):
                continue
            mean = lambda rs, f="top1": statistics.mean(r[f] for r in rs)  # noqa: E731
            d_u, d_g = mean(learned) - mean(uniform), mean(learned) - mean(global_)
            se = max(_sem([r["top1"] for r in uniform]), _sem([r["top1"] for r in global_]))
            lines.append(f"| {budget} | {d_u:+.2f} | {d_g:+.2f} | {se:.2f} | {'yes' if min(d_u, d_g) > se else 'no'} | "
                         f"{mean(learned, 'val_top1') - mean(uniform, 'val_top1'):+.2f} | "
                         f"{mean(learned, 'val_top1') - mean(global_, 'val_top1'):+.2f} |")
        lines.append("")
    lines += ["Raw runs: quality_fmnist_runs.jsonl (one line per run and seed, with the conv widths). "
              "Plot: quality_fmnist.png."]
    out.write_text("\n".join(lines) + "\n")


def plot_fashion(runs: list[dict], out: Path, headers: dict) -> None:
    """Test top-1 against FLOPs ratio per method, one panel per model (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunecli.pipeline.plots import save_figure

    models = [m for m in FASHION_MODELS if current_runs(runs, headers, m)]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        methods: dict[str, dict[float, list]] = {}
        for r in current_runs(runs, headers, model):
            if ":" in r["allocation"]:  # learned:VARIANT, tuning runs at one budget: in the table, not the plot
                continue
            name = "scratch (uniform arch)" if r["criterion"] == SCRATCH else r["allocation"]
            methods.setdefault(name, {}).setdefault(r["budget"], []).append(r)
        for name, by_budget in sorted(methods.items()):
            budgets = sorted(by_budget)
            xs = [statistics.mean(r["flops"] for r in by_budget[b]) for b in budgets]
            ys = [statistics.mean(r["top1"] for r in by_budget[b]) for b in budgets]
            es = [statistics.stdev([r["top1"] for r in by_budget[b]]) if len(by_budget[b]) > 1 else 0 for b in budgets]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
        if model in headers:
            ax.axhline(headers[model]["dense_top1"], color="grey", linestyle="--", label="dense")
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = sorted({r["budget"] for r in current_runs(runs, headers, model)})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlim(min(ticks) * 0.8, max(ticks) * 1.25)
        ax.set_xlabel("FLOPs ratio (pruned / dense)")
        ax.set_ylabel("test top-1 (%), 10,000 images")
        ax.set_title(f"Fashion-MNIST, {model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)  # a unique temporary name: two processes of the grid may write the plot at once


FASHION_PRUNE_EPOCHS_TEXT = ("--epochs of SGD (lr 0.02, cosine, cross-entropy, batch 64, no distillation) on the "
                             "training subset, the learned allocator's search epochs counted against them, the best "
                             "epoch selected on validation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits")
    parser.add_argument("--model", default="resnet20", help=f"fashion-mnist: {', '.join(FASHION_MODELS)} (comma list)")
    parser.add_argument("--data-dir", default=FASHION_DIR, help="fashion-mnist: the IDX files")
    parser.add_argument("--train-subset", type=int, default=12000, help="fashion-mnist: training images per run")
    parser.add_argument("--budgets", default=None, help="default 0.5,0.25 (digits), 0.25,0.1,0.5 (fashion-mnist)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--criteria", default=None, help="default random,l1,fpgm,taylor (digits), l1 (fashion-mnist)")
    parser.add_argument("--allocations", default=None,
                        help="default uniform,global,sensitivity,learned (+ learned-arch on digits); "
                             "learned-arch: the control LEARNED_ARCH (l1, oneshot)")
    parser.add_argument("--schedules", default=None, help="default oneshot,agp (digits), oneshot (fashion-mnist)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs after the dense model, every method")
    parser.add_argument("--search-epochs", type=int, default=2, help="of --epochs, spent by --allocation learned")
    parser.add_argument("--scratch", default=None, help="from-scratch controls: same,dense or none "
                                                        "(default same,dense on digits, same on fashion-mnist)")
    parser.add_argument("--threads", type=int, default=0, help="fashion-mnist: torch threads (default: every core); "
                        "--threads 1 lets two processes, one per core, run two models of the grid at once")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="fashion-mnist: rebuild table and plot only")
    parser.add_argument("--out", default=None, help="default benchmarks/results/quality.md or quality_fmnist.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    fashion = args.dataset == "fashion-mnist"
    defaults = {"budgets": ("0.5,0.25", "0.25,0.1,0.5"), "criteria": ("random,l1,fpgm,taylor", "l1"),
                "allocations": ("uniform,global,sensitivity,learned,learned-arch", "uniform,global,sensitivity,learned"),
                "schedules": ("oneshot,agp", "oneshot"), "scratch": ("same,dense", "same"),
                "out": ("benchmarks/results/quality.md", "benchmarks/results/quality_fmnist.md")}
    for name, pair in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, pair[fashion])

    from prunecli.graph.cost import count_params
    from prunecli.pipeline.demo import DENSE_RECIPE
    from prunecli.train.data import DataConfig, load_data

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_path = out.with_name(out.stem + "_runs.jsonl")
    runs = load_runs(runs_path)
    done = {_key(r) for r in runs}
    headers_path = out.with_name(out.stem + "_dense.json")  # fashion-mnist: what the table states of each dense model
    headers = json.loads(headers_path.read_text()) if fashion and headers_path.is_file() else {}

    models = args.model.split(",") if fashion else ["resnet20"]

    def write() -> None:
        if fashion:  # from the files: another process may be running another model of the grid
            headers.update({k: v for k, v in (json.loads(headers_path.read_text()) if headers_path.is_file()
                                              else {}).items() if k not in models})
            runs[:] = load_runs(runs_path)
            write_fashion_table(runs, out, headers)
            plot_fashion(runs, out.with_suffix(".png"), headers)
        else:
            write_table(runs, out, header)

    if fashion and (args.table_only or args.plot_only):
        write()
        return
    for model_name in models:
        if fashion:
            if model_name not in FASHION_MODELS:
                parser.error(f"--model {model_name}: choose from {', '.join(FASHION_MODELS)}")
            loaded, dense_flops, header, fresh_data = fashion_setup(model_name, args.data_dir, args.train_subset,
                                                                      args.threads, out)
            headers[model_name] = header
            on_disk = json.loads(headers_path.read_text()) if headers_path.is_file() else {}
            headers_path.write_text(json.dumps({**on_disk, model_name: header}, indent=1) + "\n")
            dense_epochs, dense_lr = FASHION_RECIPE["epochs"], FASHION_RECIPE["lr"]
        else:
            loaded, dense_flops, header = setup_dense()
            header["dense_epochs"] = dense_epochs = DENSE_RECIPE["epochs"]
            dense_lr = DENSE_RECIPE["lr"]

            def fresh_data(seed: int):
                """Loaders made anew for every run: the shuffle generator advances as a loader is iterated,
                so sharing one between runs would make a run's data order depend on the runs before it."""
                data = load_data(DataConfig("digits"), loaded.input_shape, seed=seed)
                return data, [b for _, b in zip(range(8), data.train)]
        if args.table_only:
            write()
            return
        dense_params = count_params(loaded.model)
        run_grid(args, model_name if fashion else None, header.get("dense_sha256"), loaded, dense_flops, dense_params, fresh_data, runs, done,
                 runs_path, write, dense_epochs, dense_lr)


def round_to_for(loaded, budget: float) -> int:
    """The preset's round_to, halved until ``budget`` (a FLOPs fraction) is reachable: ResNet-20 at width 16 stops
    at 0.117 of its FLOPs with round_to 8 (its residual streams keep 8 of 16 channels) and needs 4 for 0.1."""
    from prunecli.plan.constraints import prunable_groups

    step = None
    while True:
        analysis, step = prunable_groups(loaded, round_to=step)
        if analysis.min_flops_ratio < budget * 0.99 or step == 1:
            return step
        step = max(1, step // 2)


def run_grid(args, model_name, dense_sha, loaded, dense_flops, dense_params, fresh_data, runs, done, runs_path, write,
             dense_epochs: int, dense_lr: float) -> None:
    import torch

    from prunecli.graph.cost import count_flops, count_params
    from prunecli.pipeline.config import PruneConfig
    from prunecli.pipeline.schedules import SCHEDULES, Agp, Context
    from prunecli.plan.allocators import ALLOCATORS, Learned
    from prunecli.plan.targets import BudgetTarget
    from prunecli.train.finetune import FinetuneConfig, evaluate, fit

    tag = {"model": model_name, "dense": dense_sha} if model_name else {}

    def record(run: dict) -> None:
        runs.append(run)
        done.add(_key(run))
        with runs_path.open("a") as f:
            f.write(json.dumps(run) + "\n")
        write()
        print(model_name or "digits", run["budget"], run["seed"], run["criterion"], run["allocation"], run["schedule"],
              f"{run['top1']:.2f}", f"{run['wall_s']:.0f}s", flush=True)

    def ratios(model) -> dict:
        """The model's cost ratios and its conv widths: two plans can cost the same FLOPs, so a recorded run is
        tied to its architecture (a change of the budget fit that moves channels shows up as a changed width)."""
        widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        return {"flops": count_flops(model, loaded.example_input) / dense_flops,
                "params": count_params(model) / dense_params, "widths": widths}

    def val_top1(model, data) -> dict:
        return {"val_top1": evaluate(model, data.val)["top1"]} if model_name else {}

    scratch_modes = [m for m in args.scratch.split(",") if m and m != "none"]
    for budget in [float(b) for b in args.budgets.split(",")]:
        round_to = round_to_for(loaded, budget)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for criterion in args.criteria.split(","):
                for allocation in args.allocations.split(","):
                    for schedule in args.schedules.split(","):
                        method, _, variant = allocation.partition(":")  # learned:VARIANT, see LEARNED_VARIANTS
                        learned = method in ("learned", "learned-arch")
                        if learned and (criterion != "l1" or schedule != "oneshot"):
                            continue
                        if variant and (method != "learned" or variant not in LEARNED_VARIANTS):
                            raise SystemExit(f"--allocations {allocation}: variants are learned:"
                                             f"{'|'.join(LEARNED_VARIANTS)}")
                        overrides = dict(LEARNED_VARIANTS.get(variant, {}))
                        search = overrides.pop("epochs", args.search_epochs) if learned else 0
                        base = {**tag, "budget": budget, "criterion": SEARCHED if method == "learned" else criterion,
                                "allocation": LEARNED_ARCH if method == "learned-arch" else allocation,
                                "schedule": schedule, "epochs": args.epochs, "seed": seed}
                        if _key(base) in done:
                            continue
                        data, batches = fresh_data(seed)
                        config = PruneConfig(flops=BudgetTarget("flops", budget), criterion=criterion,
                                             seed=seed, round_to=round_to,
                                             allocation=Learned(
                                                 epochs=search, weights="dense" if method == "learned-arch" else "searched",
                                                 **overrides)
                                             if learned else ALLOCATORS.config(allocation)(),
                                             schedule=Agp(steps=3) if schedule == "agp" else SCHEDULES.config(schedule)())
                        spent = search if method == "learned" else 0  # the control does not count its search
                        finetune = FinetuneConfig(epochs=args.epochs - spent, lr=0.02, seed=seed, progress=False)
                        t0 = time.perf_counter()
                        ctx = Context(loaded, config, finetune, data, batches, None, {})
                        outcome = SCHEDULES.get(schedule)(ctx)
                        wall = time.perf_counter() - t0
                        result = evaluate(outcome.model, data.test)
                        scan = ctx.timings.get("sensitivity", {})
                        allocation_s = ctx.timings.get("search_allocation_s", scan.get("scan_s", 0.0))
                        record({**base, "top1": result["top1"], "top5": result["top5"], "wall_s": wall,
                                "allocation_s": allocation_s,
                                # a scan reused from the cache still cost its time once: count it
                                "total_s": wall + (scan.get("scan_s", 0.0) if scan.get("cached") else 0.0),
                                "round_to": round_to, "search_epochs": search, "search_counted": bool(spent), "best_epoch": outcome.best_epoch,
                                "before": (outcome.accuracy_pruned or {}).get("top1"), **val_top1(outcome.model, data),
                                **ratios(outcome.model)})
            for mode in scratch_modes:  # "Rethinking the value of pruning": same architecture, fresh weights
                epochs = args.epochs if mode == "same" else dense_epochs
                base = {**tag, "budget": budget, "criterion": SCRATCH, "allocation": "-", "schedule": "from scratch",
                        "epochs": epochs, "seed": seed}
                if _key(base) in done:
                    continue
                data, _ = fresh_data(seed)
                t0 = time.perf_counter()
                config = PruneConfig(flops=BudgetTarget("flops", budget), criterion="l1", seed=seed,
                                     round_to=round_to)
                outcome = SCHEDULES.get("oneshot")(Context(loaded, config, FinetuneConfig(epochs=0), None, None, None, {}))
                model = copy.deepcopy(outcome.model)
                torch.manual_seed(seed)
                for m in model.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
                lr = 0.02 if mode == "same" else dense_lr
                fit(model, data.train, data.val, FinetuneConfig(epochs=epochs, lr=lr, seed=seed, progress=False), None)
                result = evaluate(model, data.test)
                record({**base, "top1": result["top1"], "top5": result["top5"], "before": None, "round_to": round_to,
                        "wall_s": time.perf_counter() - t0, **val_top1(model, data), **ratios(model)})


if __name__ == "__main__":
    main()
