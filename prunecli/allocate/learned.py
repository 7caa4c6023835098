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
channels each group's alpha removes, so :mod:`prunecli.budget`'s bisection lands on the learned counts
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

from ..config import DEFAULT_SEARCH_EPOCHS
from ..device import CPU, to_cpu_
from . import ALLOCATORS, removable_steps


@dataclass(frozen=True)
class SearchConfig:
    epochs: int = DEFAULT_SEARCH_EPOCHS
    lr: float = 0.01  # weights (SGD, momentum 0.9)
    alpha_lr: float = 0.1  # theta (momentum, one RMS scale shared by all groups)
    estimator: str = "fd"  # dL/dalpha: "fd" central differences of the loss, "ste" DSA's straight-through masks
    fd_delta: float = 0.05  # half-width of the differences, in keep ratio (at least one channel)
    fd_groups: int = 32  # groups measured per step (in rotation when a model has more)
    alpha_init: float = 0.99
    beta2_start: float = 50.0
    beta2_end: float = 500.0
    target_fraction: float = 0.5  # of the search steps over which the target falls to the budget
    held_out: float = 0.1
    seed: int = 0  # prunecli.planner sets it to --seed
    # "searched": keep the search's trained weights and its channel ranking; "dense": apply the learned counts to
    # the input's weights with --criterion (a control in benchmarks/quality.py that judges the allocation alone)
    weights: str = "searched"

    def __post_init__(self) -> None:
        if self.weights not in ("searched", "dense"):
            raise ValueError(f"learned weights {self.weights!r} must be 'searched' or 'dense'")
        if self.epochs < 1:
            raise ValueError(f"--search-epochs {self.epochs} must be >= 1 for --allocation learned")
        if not 0 < self.alpha_init < 1:
            raise ValueError(f"alpha_init {self.alpha_init} must be in (0, 1)")
        if self.estimator not in ("fd", "ste"):
            raise ValueError(f"estimator {self.estimator!r} must be 'fd' or 'ste'")
        if not 0 < self.held_out < 0.5:
            raise ValueError(f"held_out {self.held_out} must be in (0, 0.5)")


# ---------------------------------------------------------------------------------------------- cost model
class ExpectedCost:
    """Expected FLOPs or params of the model as a polynomial in the groups' keep ratios."""

    def __init__(self, model, example_input, groups, metric: str, roles=None) -> None:
        import torch

        from ..cost import module_flops
        from ..graph import channel_roles

        self.roots = [g.root for g in groups]
        index = {r: i for i, r in enumerate(self.roots)}
        roles = roles if roles is not None else channel_roles(model, example_input, groups)
        self.terms: list[tuple[float, int | None, dict]] = []  # (dense cost, out group, {in group: share})
        self.constant = 0.0
        modules = dict(model.named_modules())
        per_module = module_flops(model, example_input) if metric == "flops" else None
        for name, module in modules.items():
            role = roles.get(name, {})
            out_g = index.get(role.get("out"))
            width = _in_width(module)
            in_g = {index[r]: n / width for r, n in role.get("in", {}).items() if r in index and width}
            depthwise = isinstance(module, torch.nn.modules.conv._ConvNd) and module.groups > 1 \
                and module.groups == module.in_channels == module.out_channels
            if depthwise:
                in_g = {}  # its input channels are its output channels: linear in one ratio
            if metric == "flops":
                value = float(per_module.get(name, 0))
                if value:
                    self._add(value, out_g, in_g)
                continue
            for pname, p in module.named_parameters(recurse=False):
                if p.dim() >= 2:
                    self._add(float(p.numel()), out_g, in_g)
                else:  # biases, norm scales: one entry per output channel
                    self._add(float(p.numel()), out_g, {})
        self.dense = self.constant + sum(t[0] for t in self.terms)

    def _add(self, value: float, out_g, in_g: dict) -> None:
        if out_g is None and not in_g:
            self.constant += value
        else:
            self.terms.append((value, out_g, in_g))

    def __call__(self, alpha):
        """Expected cost for keep ratios ``alpha`` (a 1-D tensor, differentiable). An input side fed by a
        concatenation is the share-weighted sum of its groups' ratios (fixed channels count 1)."""
        import torch

        total = torch.zeros((), dtype=alpha.dtype) + self.constant
        for value, out_g, in_g in self.terms:
            out_factor = alpha[out_g] if out_g is not None else 1.0
            in_factor = (1.0 - sum(in_g.values())) + sum(share * alpha[g] for g, share in in_g.items()) if in_g else 1.0
            total = total + value * out_factor * in_factor
        return total


def _in_width(module) -> int:
    for attr in ("in_channels", "in_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return 0


# ------------------------------------------------------------------------------------------- keep probabilities
def _bracket_falling(fn, value: float, lo: float, hi: float, iterations: int = 60) -> tuple[float, float]:
    """(lo, hi) around x with fn(x) = value, fn falling in x: fn(lo) > value >= fn(hi) (bisection)."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if fn(mid) > value:
            lo = mid
        else:
            hi = mid
    return lo, hi


def solve_threshold(u, alpha: float, beta2: float, iterations: int = 60) -> float:
    """log(beta1): the c with mean(sigmoid(beta2 * (u - c))) = alpha (bisection; the mean falls as c rises)."""
    import torch

    with torch.no_grad():
        lo, hi = _bracket_falling(lambda c: float(torch.sigmoid(beta2 * (u - c)).mean()), alpha,
                                  float(u.min()) - 40.0 / beta2, float(u.max()) + 40.0 / beta2, iterations)
    return 0.5 * (lo + hi)


def keep_probabilities(u, alpha, beta2: float):
    """p_i = sigmoid(beta2 * (u_i - c(alpha))), with mean(p) = alpha and dp/dalpha by implicit differentiation."""
    import torch

    c = solve_threshold(u, float(alpha.detach()), beta2)
    s = torch.sigmoid(beta2 * (u - c))
    slope = (s * (1 - s)).mean().clamp_min(1e-12)  # d mean(p) / dc = -beta2 * slope
    dc_dalpha = -1.0 / (beta2 * slope)
    c_t = c + (alpha - alpha.detach()) * dc_dalpha  # value c, gradient dc/dalpha
    return torch.sigmoid(beta2 * (u - c_t))


# ----------------------------------------------------------------------------------------------------- masks
def _producers(model, groups, roles) -> dict[str, list[str]]:
    """Per group, the modules whose outputs carry its channels last: norms, and convs/linears with no norm
    of the same group consuming their output."""
    import torch

    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        members = [n for n, r in roles.items() if r.get("out") == g.root]
        with_norm = [n for n in members if isinstance(modules[n], norms)]
        convs = [n for n in members if not isinstance(modules[n], norms)]
        out[g.root] = with_norm or convs
    return out


def importance(model, group, roles) -> "object":
    """b_i: |gamma| of the group's first norm layer with a scale, else the root's filter L1 norms (detached)."""
    import torch

    modules = dict(model.named_modules())
    for name, r in roles.items():
        m = modules[name]
        if r.get("out") == group.root and isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            return m.weight.detach().abs()
    w = modules[group.root].weight.detach()
    return w.abs().reshape(w.shape[0], -1).sum(dim=1)


class Masks:
    """Forward hooks that multiply each group's channels by its current mask."""

    def __init__(self, model, groups, roles) -> None:
        self.groups, self.roles, self.model = groups, roles, model
        self.current: dict[str, object] = {}
        self.u: dict[str, object] = {}
        modules = dict(model.named_modules())
        self.handles = []
        for root, names in _producers(model, groups, roles).items():
            for name in names:
                self.handles.append(modules[name].register_forward_hook(self._hook(root)))

    def _hook(self, root):
        def apply(module, inputs, output):
            mask = self.current.get(root)
            if mask is None:
                return output
            shape = [1, -1] + [1] * (output.dim() - 2)
            return output * mask.view(*shape).to(device=output.device, dtype=output.dtype)

        return apply

    def refresh(self) -> None:
        """Re-read every group's importances (u_i = log b_i - mean log b_i) from the current weights."""
        self.u = {}
        for g in self.groups:
            b = importance(self.model, g, self.roles).clamp_min(1e-12)
            self.u[g.root] = b.log() - b.log().mean()

    def noise(self, generator) -> dict:
        """One uniform draw per channel: mask_i = [noise_i < p_i], so masks at nearby alphas share randomness."""
        import torch

        return {g.root: torch.rand(g.channels, generator=generator) for g in self.groups}

    def set(self, alpha, beta2: float, noise: dict, straight_through: bool = False) -> None:
        """Masks at keep ratios ``alpha`` (a tensor; with ``straight_through`` its gradient flows to alpha)."""
        if not self.u:
            self.refresh()
        self.current = {}
        for k, g in enumerate(self.groups):
            p = keep_probabilities(self.u[g.root], alpha[k], beta2)
            hard = (noise[g.root].to(p.device) < p.detach()).float()
            self.current[g.root] = hard + p - p.detach() if straight_through else hard

    def sample(self, alpha, beta2: float, generator) -> None:
        """Straight-through Bernoulli masks from the keep probabilities at ``alpha`` (fresh randomness)."""
        self.set(alpha, beta2, self.noise(generator), straight_through=True)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.current = {}


# ---------------------------------------------------------------------------------------------------- search
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


def search(source_model, example_input, groups, train_loader, metric: str, target: float, config: SearchConfig,
           progress=None, placement=None) -> SearchResult:
    """Learn per-group keep ratios under ``cost(alpha) <= target`` (``metric`` flops|params, absolute)."""
    import torch

    from ..graph import channel_roles

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
                    from ..errors import RuntimeFailure

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


@ALLOCATORS.register("learned", needs="search", settings=SearchConfig)
def learned(groups, scores, config, evidence=None) -> list[str]:
    """Steps ordered so that applying t of them removes, in every group, about the same share of what its
    learned ratio removes: the budget fit then lands on the learned counts scaled to the exact budget."""
    result = (evidence or {}).get("search")
    if result is None:
        raise ValueError("the learned allocator needs a search result (plan_model runs it when --data is given)")
    events = []
    for index, group in enumerate(groups):
        remove = max(1.0 - result.alpha.get(group.root, 1.0), 1e-3)
        for k in range(1, removable_steps(group) + 1):
            events.append(((k * group.step / group.channels) / remove, index, group.root))
    events.sort()
    return [root for *_, root in events]
