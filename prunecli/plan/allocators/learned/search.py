"""Learned allocation: the task loss sets each group's keep ratio by gradient, under the budget.

A reconstruction of DSA (Ning et al., "DSA: More Efficient Budgeted Pruning via Differentiable
Sparsity Allocation", ECCV 2020) on Torch-Pruning's channel groups (DSA's "topological groups"), with
three departures that measurements on BatchNorm networks forced (below).

Search (``search``), on a copy of the model, in train mode:
- every group k has a keep ratio alpha_k = lo_k + (1 - lo_k) * sigmoid(theta_k - nu), where lo_k is
  its floor (``min_keep / channels``) and nu is one shift shared by all groups, solved by bisection so
  that the expected cost equals the current target (``budget_shift``). The thetas start equal, so the
  search starts from the uniform allocation at every budget level; the loss moves their differences;
- channel i of group k has an importance b_i (|gamma| of the group's first BatchNorm, else the root
  filter's L1 norm; re-read every step) and a keep probability p_i = sigmoid(beta2 * (log b_i -
  log beta1)), where log beta1 is solved by bisection so that mean_i p_i = alpha_k (with an
  implicit-differentiation gradient, for the straight-through estimator); masks m_i = [u_i < p_i],
  u_i uniform, multiply the outputs of the group's producing layers (its norms, or its convs);
  beta2 rises geometrically over the search (``beta2_start`` -> ``beta2_end``) to shrink the masks'
  variance (DSA's "two softenings" and variance control);
- the expected cost is a polynomial in the alphas, exact in expectation: a conv whose input channels
  belong to group a and output channels to group b costs F * alpha_a * alpha_b, a depthwise conv
  F * alpha_k, a fixed side counts 1 (params likewise, biases and norms linearly); tested against
  FlopCounterMode on physically pruned models;
- each step trains the weights on 90% of the training data (SGD, masks at the current ratios) and
  measures the loss slopes g_k = dL/dalpha_k on a batch of the held-out 10% (``loss_slopes``):
  central differences alpha_k +- 0.05 (at least one channel) with common random numbers (the same
  batch and mask noise on both sides), the norms on batch statistics as after pruning and
  recalibration, running statistics untouched;
- theta moves along the reduced gradient (``reduced_gradient``): the derivative of the loss when nu is
  re-solved after the move, a'_k * (g_k - lambda * c_k) with c = dcost/dalpha and lambda =
  sum g a' / sum c a'. It is zero exactly where g_k / c_k is equal for all groups, the KKT point of
  min loss s.t. cost = target: every group then gives up channels until a unit of cost saved costs
  the same loss everywhere. Momentum with one RMS scale shared by all groups (per-coordinate Adam would
  erase the differences between groups' gradients, which are exactly what sets their ratios). The
  target falls from the cost at alpha 0.99 to the budget over the first half of the search (cubic,
  as AGP), then stays there.
Hardening (``learned``, the allocator): the removal order takes groups' steps in proportion to the
channels each group's alpha removes, so :mod:`prunecli.plan.budget`'s bisection lands on the learned counts
scaled to meet the budget exactly (within the tolerance, never above); each group keeps its channels
with the highest b_i on the searched weights, which are the weights fine-tuning starts from.

Departures from DSA, and why:
- the loss slopes are finite differences, not the straight-through gradient of the masks. In a
  BatchNorm network the loss is nearly invariant to the scale of a layer's input channels, so the
  straight-through gradient (a first-order expansion around the sampled mask) misses what removing a
  channel costs: on the demo ResNet-20 it is about 0 for every inner conv and has the reference's sign
  for 4 of 12 groups (rank correlation -0.20), while the finite difference has it for 10 of 12 (the
  two misses are near 0) with rank correlation +0.59; the reference is the expected loss's own
  difference (benchmarks/results/learned_estimators.md). ``estimator="ste"`` keeps DSA's estimator;
- the budget is held by the shared logit shift and the reduced gradient instead of ADMM's dual
  updates or a projection along the cost gradient: a projection along dcost/dalpha, starting from
  alpha 0.99, cuts the residual streams (the groups with the largest cost slope) before the loss has
  any say, and a short search never recovers from it; the shift starts uniform, is feasible at every
  step and has the same fixed points;
- beta2 starts high (50, DSA 2): with a search of an epoch or two, the random masks of a soft start leave the
  network near chance while the ratios are being chosen, and the slopes measured there mislead;
- the budget is met exactly by the shared fit; the search is short (``--search-epochs``, default 2: on
  the digits benchmark's validation split, mean loss after fine-tuning over 5 seeds at flops 0.25 / 0.5
  was 0.035 / 0.041 with 2 search epochs of 5; over 3 seeds, 1 gave 0.061 at 0.25 and 3 gave
  0.064 / 0.048) and counts against the epochs a comparison gives every method.

Variants tried and rejected on the same validation measure (mean loss after fine-tuning, 5 epochs in all,
seeds 0-2, flops 0.5 / 0.25; the defaults scored 0.037 / 0.033): one-sided differences on the removal side
only (a masked channel gets no gradient, so the side that adds channels back might undervalue them) 0.038 /
0.043; a pull of the logits toward equal (toward uniform) 0.044 / 0.066 and 0.050 / 0.068 at two strengths;
weight lr 0.02 during the search 0.046 / 0.031; the target reaching the budget in a quarter of the search
0.069 / 0.045. Earlier: finite differences at least one round_to step wide, 0.047 / 0.071 (5 seeds); alpha_lr
0.05, 0.050 / 0.052 (5 seeds).

On the demo benchmark the learned allocation does not beat uniform (benchmarks/results/quality.md), and
benchmarks/headroom.py suggests why: of 16 fixed allocations given the same dense weights, criterion and
fine-tuning (uniform, global, stream/inner and stage skews, 10 random), uniform had the lowest validation loss
at both flops 0.5 and 0.25, and the few that scored above it on test did so by less than their seeds' spread.
The learned search keeps the last stage's residual stream near full width and narrows its inner convs (the
stream's loss slope during the search is the steepest); after fine-tuning that skew does not pay on digits.

On Fashion-MNIST (benchmarks/results/quality_fmnist.md, 3 seeds, 5 epochs in all), where the test set can separate
methods: ResNet-20 at flops 0.1, test top-1 90.13 against uniform 89.81 and global 89.69, but level with uniform on
validation; at 0.25 0.1 below both; plain VGG level with global at 0.1 and 0.25. Variants on the VGG at 0.1 judged
on validation (top-1, mean +- se): the defaults 90.52 +- 0.14 (236 s a run); 4 groups' slopes per step
(``fd_groups=4``) 90.59 +- 0.07 (142 s); one search epoch of five 90.81 +- 0.21 (124 s); DSA's straight-through
estimator 84.32 +- 1.14 (it collapses the allocation: 1.6% of params kept). None is ahead by more than the seeds'
spread, so the defaults stay until a model where learned wins (ResNet-20 at 0.1) decides between them.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

from prunecli.core.device import CPU, to_cpu_
from prunecli.plan.allocators.learned.allocator import DEFAULT_SEARCH_EPOCHS, Learned
from prunecli.graph.polynomial import ExpectedCost
from prunecli.plan.allocators.learned.masks import (
    Masks,
    _bracket_falling,
    importance,
    keep_probabilities,
)


@dataclass
class SearchResult:
    model: object  # the searched copy (trained weights)
    alpha: dict  # root -> final keep ratio
    history: list  # per step: {"step", "alpha": [...], "target_ratio", "expected_ratio", "beta2", "loss"}
    scores: dict  # root -> b_i on the searched weights (numpy), for choosing the kept channels
    wall_s: float
    roots: list = field(default_factory=list)
    estimator: str = "fd"
    epochs: int = DEFAULT_SEARCH_EPOCHS


def _split_loader(loader, held_out: float, seed: int):
    import torch

    dataset = loader.dataset
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(n * held_out)))
    make = lambda idx: torch.utils.data.DataLoader(  # noqa: E731
        torch.utils.data.Subset(dataset, idx), batch_size=min(loader.batch_size, len(idx)), shuffle=True,
        generator=torch.Generator().manual_seed(seed), num_workers=0,
        drop_last=True)  # a remainder of a few samples would give the norms' batch statistics nothing to work on
    return make(order[k:]), make(order[:k])


def _cycle(loader):
    while True:
        yield from loader


def budget_shift(theta, alpha_of, cost, target: float) -> float:
    """nu with cost(alpha_of(theta - nu)) = target: one shift of every group's logit (bisection; the cost
    falls as nu rises). Equal thetas give the uniform allocation at every target."""
    import torch

    with torch.no_grad():
        return _bracket_falling(lambda nu: float(cost(alpha_of(theta - nu))), target, -40.0, 40.0)[1]


def reduced_gradient(slopes, cost_slopes, dalpha_dtheta):
    """Gradient of the loss in theta when the budget shift nu(theta) is re-solved after every move:
    d_j = a'_j * (g_j - c_j * sum_k g_k a'_k / sum_k c_k a'_k), with g = dL/dalpha, c = dcost/dalpha and
    a' = dalpha/dtheta. It vanishes exactly where g_k / c_k is the same for every group: the KKT point of
    min loss s.t. cost = target (equal loss per unit of cost saved)."""
    lam = float((slopes * dalpha_dtheta).sum()) / max(float((cost_slopes * dalpha_dtheta).sum()), 1e-30)
    return dalpha_dtheta * (slopes - lam * cost_slopes)


class _BatchStatistics:
    """Train-mode forwards (norms use the batch's statistics, as after pruning and recalibration) that leave
    the running statistics untouched."""

    def __init__(self, model) -> None:
        import torch

        self.norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                      for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        return self

    def __exit__(self, *exc) -> None:
        for m, (momentum, tracked) in zip(self.norms, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def loss_slopes(model, masks, alpha, beta2: float, x, y, noise, delta: float, lo, groups, subset, loss_fn):
    """Central differences of the task loss in each group's keep ratio, dL/dalpha_k ~ (L(alpha_k + d) -
    L(alpha_k - d)) / 2d, with common random numbers (the same channel noise and batch on both sides), so
    that only group k's kept channels differ. Returns (slopes for ``subset``, the loss at ``alpha``)."""
    import torch

    out = {}
    with torch.no_grad(), _BatchStatistics(model):
        masks.set(alpha, beta2, noise)
        base_masks = dict(masks.current)
        base = float(loss_fn(model(x), y))
        for k in subset:
            g = groups[k]
            d = max(delta, 1.0 / g.channels)  # at least one channel either side
            up, down = min(1.0, float(alpha[k]) + d), max(float(lo[k]), float(alpha[k]) - d)
            if up - down < 1e-9:
                out[k] = 0.0
                continue
            values = []
            for a in (up, down):
                p = keep_probabilities(masks.u[g.root], torch.tensor(a), beta2)
                masks.current = {**base_masks, g.root: (noise[g.root].to(p.device) < p).float()}
                values.append(float(loss_fn(model(x), y)))
            out[k] = (values[0] - values[1]) / (up - down)
        masks.current = base_masks
    return out, base


def search(source_model, example_input, groups, train_loader, metric: str, target: float, config: Learned,
           progress=None, placement=None) -> SearchResult:
    """Learn per-group keep ratios under ``cost(alpha) <= target`` (``metric`` flops|params, absolute)."""
    import torch

    from prunecli.graph.groups import channel_roles

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = copy.deepcopy(source_model)
    roles = channel_roles(model, example_input, groups)
    cost = ExpectedCost(model, example_input, groups, metric, roles=roles)
    model.train()  # norms on batch statistics: the masked network is judged as it will be after recalibration
    lo = torch.tensor([g.min_keep / g.channels for g in groups], dtype=torch.float64)
    alpha_of = lambda t: lo + (1 - lo) * torch.sigmoid(t)  # noqa: E731
    theta = torch.zeros(len(groups), dtype=torch.float64)  # equal logits: the uniform allocation
    weights_opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4)
    momentum = torch.zeros_like(theta)
    estimate = torch.zeros_like(theta)  # latest dL/dalpha per group (fd measures a subset per step)
    second = 0.0  # one second moment for all groups: Adam's per-coordinate scaling would
    # erase the differences between groups' gradients, which are exactly what sets their ratios
    w_loader, a_loader = _split_loader(train_loader, config.held_out, config.seed)
    a_batches = _cycle(a_loader)
    steps = config.epochs * len(w_loader)
    start_cost = float(cost(torch.full_like(theta, config.alpha_init).maximum(lo)))
    placement = placement or CPU
    placement.move_(model)
    masks = Masks(model, groups, roles)
    order = torch.randperm(len(groups), generator=generator).tolist()
    per_step = min(len(groups), config.fd_groups)
    history = []
    task = progress.add_task("learned allocation search", total=steps, info="") if progress is not None else None
    loss_fn = torch.nn.functional.cross_entropy
    try:
        step = 0
        for _ in range(config.epochs):
            for x, y in w_loader:
                x, y = placement.batch(x, y)
                frac = step / max(1, steps - 1)
                beta2 = config.beta2_start * (config.beta2_end / config.beta2_start) ** frac
                ramp = min(1.0, step / max(1.0, config.target_fraction * steps))
                target_t = target + (start_cost - target) * (1 - ramp) ** 3
                nu = budget_shift(theta, alpha_of, cost, target_t)
                alpha = alpha_of(theta - nu)
                # weights on the 90%, under masks sampled at the current ratios
                masks.refresh()
                masks.set(alpha.float(), beta2, masks.noise(generator))
                loss = loss_fn(model(x), y)
                weights_opt.zero_grad(set_to_none=True)
                loss.backward()
                weights_opt.step()
                # ratios on the held-out 10%
                masks.refresh()
                xa, ya = placement.batch(*next(a_batches))
                if config.estimator == "fd":
                    start = (step * per_step) % len(groups)
                    subset = [order[(start + i) % len(groups)] for i in range(per_step)]
                    slopes, alpha_loss = loss_slopes(model, masks, alpha.float(), beta2, xa, ya, masks.noise(generator),
                                                     config.fd_delta, lo, groups, subset, loss_fn)
                    for k, v in slopes.items():
                        estimate[k] = v
                else:  # "ste": DSA's straight-through gradient of the sampled masks
                    a = alpha.detach().clone().float().requires_grad_(True)
                    masks.sample(a, beta2, generator)
                    with _BatchStatistics(model):
                        value = loss_fn(model(xa), ya)
                    (grad,) = torch.autograd.grad(value, a)
                    estimate = grad.detach().double()
                    alpha_loss = float(value.detach())
                with torch.enable_grad():
                    a = alpha.detach().clone().requires_grad_(True)
                    (cost_slopes,) = torch.autograd.grad(cost(a), a)
                s = torch.sigmoid(theta - nu)
                grad = reduced_gradient(estimate, cost_slopes, (1 - lo) * s * (1 - s))
                momentum.mul_(0.9).add_(grad, alpha=0.1)
                second = 0.99 * second + 0.01 * float((grad ** 2).mean())
                scale = math.sqrt(second / (1 - 0.99 ** (step + 1))) + 1e-12
                theta = theta - config.alpha_lr * momentum / (1 - 0.9 ** (step + 1)) / scale
                theta = theta - theta.mean()  # only differences matter (the shift absorbs the mean)
                nu = budget_shift(theta, alpha_of, cost, target_t)
                expected = float(cost(alpha_of(theta - nu))) / cost.dense
                if not math.isfinite(float(loss.detach())) or not math.isfinite(alpha_loss):
                    from prunecli.core.errors import RuntimeFailure

                    raise RuntimeFailure(f"the learned allocation search diverged at step {step} (loss {float(loss.detach())}); "
                                         "lower --lr or use another --allocation")
                history.append({"step": step, "alpha": [round(float(a), 5) for a in alpha_of(theta - nu)],
                                "target_ratio": target_t / cost.dense, "expected_ratio": expected, "beta2": beta2,
                                "loss": float(loss.detach()), "alpha_loss": alpha_loss,
                                "slope": [round(float(v), 5) for v in estimate]})
                if task is not None:
                    progress.update(task, advance=1, info=f"loss {float(loss.detach()):.3f}  expected {metric} {expected:.3f}")
                step += 1
    finally:
        masks.remove()
    to_cpu_(model.eval())
    final = alpha_of(theta - budget_shift(theta, alpha_of, cost, target))
    scores = {g.root: importance(model, g, roles).numpy().astype("float64") for g in groups}
    return SearchResult(model, {g.root: float(final[k]) for k, g in enumerate(groups)}, history, scores,
                        time.perf_counter() - started, [g.root for g in groups], config.estimator, config.epochs)
