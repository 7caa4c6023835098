"""How well does each estimate of dL/dalpha_k follow the loss? The learned allocator's design check.

    python benchmarks/learned_estimators.py         # the demo's digits ResNet-20, all groups at alpha 0.5

For every channel group k of the dense demo model, at keep ratios alpha = 0.5 everywhere (beta2 5), on 8
training batches x --repeats mask draws, it compares
- the reference: a wide central difference of the expected loss, (E[L](alpha_k + 0.1) - E[L](alpha_k - 0.1)) / 0.2,
  with the norms on batch statistics (train mode), i.e. the network as it is judged after pruning and
  BatchNorm recalibration;
- `ste`: DSA's straight-through gradient of the sampled masks, in train mode and with the norms' batch
  statistics detached;
- `ste-eval`: the straight-through gradient with the norms on their (dense) running statistics;
- `fd`: prunecli's estimator, central differences of half-width 0.05 (at least one channel) with common
  random numbers, one batch per draw, averaged like the others.
Writes benchmarks/results/learned_estimators.md. The sign is what steers a group's ratio: the table
counts the groups whose estimate has the reference's sign, and the rank correlation of the magnitudes.
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta2", type=float, default=5.0)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/learned_estimators.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    import torch.nn.functional as F
    from scipy.stats import spearmanr

    from prunecli.artifacts.load import load_model
    from prunecli.graph.groups import channel_roles
    from prunecli.pipeline.demo import dense_checkpoint
    from prunecli.plan.allocators.learned.search import (
        Masks,
        _BatchStatistics,
        loss_slopes,
    )
    from prunecli.plan.constraints import prunable_groups
    from prunecli.train.data import DataConfig, load_data

    torch.set_num_threads(os.cpu_count() or 1)
    path, _ = dense_checkpoint()
    loaded = load_model(str(path))
    analysis, _ = prunable_groups(loaded)
    groups = analysis.groups
    model = loaded.model
    roles = channel_roles(model, loaded.example_input, groups)
    data = load_data(DataConfig("digits"), loaded.input_shape, seed=0)
    batches = [b for _, b in zip(range(args.batches), data.train)]
    masks = Masks(model, groups, roles)
    masks.refresh()
    lo = torch.tensor([g.min_keep / g.channels for g in groups], dtype=torch.float64)
    base = torch.full((len(groups),), args.alpha, dtype=torch.float64)

    def expected_loss(alpha, seed=0) -> float:
        gen, total, n = torch.Generator().manual_seed(seed), 0.0, 0
        model.train()
        with torch.no_grad(), _BatchStatistics(model):
            for _ in range(args.repeats):
                for x, y in batches:
                    masks.set(alpha.float(), args.beta2, masks.noise(gen))
                    total, n = total + float(F.cross_entropy(model(x), y)), n + 1
        return total / n

    def ste(mode: str):
        gen, grad, n = torch.Generator().manual_seed(1), torch.zeros(len(groups), dtype=torch.float64), 0
        model.train(mode != "eval")
        hooks = []
        if mode == "detached":  # batch statistics as constants
            def normalise(module, inputs, output):
                (x,) = inputs
                with torch.no_grad():
                    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
                shape = (1, -1, 1, 1)
                return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + module.eps) * module.weight.view(shape) \
                    + module.bias.view(shape)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    hooks.append(m.register_forward_hook(normalise, prepend=True))  # before the mask
        with _BatchStatistics(model):
            for _ in range(args.repeats):
                for x, y in batches:
                    a = base.clone().float().requires_grad_(True)
                    masks.sample(a, args.beta2, gen)
                    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), a)
                    grad, n = grad + g.double(), n + 1
        for h in hooks:
            h.remove()
        return grad / n

    def fd():
        gen, total, n = torch.Generator().manual_seed(2), torch.zeros(len(groups), dtype=torch.float64), 0
        model.train()
        for _ in range(args.repeats):
            for x, y in batches:
                slopes, _ = loss_slopes(model, masks, base.float(), args.beta2, x, y, masks.noise(gen), 0.05, lo, groups,
                                        range(len(groups)), F.cross_entropy)
                total, n = total + torch.tensor([slopes[k] for k in range(len(groups))], dtype=torch.float64), n + 1
        return total / n

    reference = []
    for k in range(len(groups)):
        up, down = base.clone(), base.clone()
        up[k], down[k] = base[k] + 0.1, base[k] - 0.1
        reference.append((expected_loss(up) - expected_loss(down)) / 0.2)
    reference = torch.tensor(reference, dtype=torch.float64)
    estimates = {"ste": ste("train"), "ste (detached stats)": ste("detached"), "ste-eval": ste("eval"), "fd": fd()}

    lines = [
        "# Estimators of the loss slope dL/dalpha_k (the learned allocator's design check)",
        "",
        f"Demo digits ResNet-20 (dense), every group at alpha {args.alpha}, beta2 {args.beta2}, {args.batches} training "
        f"batches x {args.repeats} mask draws; reference: central difference of the expected loss (half-width 0.1, "
        f"train-mode norms, i.e. as judged after pruning and BatchNorm recalibration). Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| group | channels | reference | " + " | ".join(estimates) + " |",
        "|---|---:|---:|" + "---:|" * len(estimates),
    ]
    for k, g in enumerate(groups):
        lines.append(f"| {g.root} | {g.channels} | {float(reference[k]):+.3f} | "
                     + " | ".join(f"{float(v[k]):+.3f}" for v in estimates.values()) + " |")
    lines += ["", "| estimator | groups with the reference's sign | Spearman rank correlation with the reference |",
              "|---|---:|---:|"]
    for name, v in estimates.items():
        agree = int(((v * reference) > 0).sum())
        rho = spearmanr(v.numpy(), reference.numpy()).statistic
        lines.append(f"| {name} | {agree}/{len(groups)} | {rho:+.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
