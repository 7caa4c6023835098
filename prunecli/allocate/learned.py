"""Learned allocation: the task loss sets each group's keep ratio by gradient, under the budget.

A reconstruction of DSA (Ning et al., "DSA: More Efficient Budgeted Pruning via Differentiable
Sparsity Allocation", ECCV 2020) on Torch-Pruning's channel groups (DSA's "topological groups").

Search (``search``), on a copy of the model:
- every group k has a keep ratio alpha_k = lo_k + (1 - lo_k) * sigmoid(theta_k), where lo_k is its
  floor (``min_keep / channels``); theta starts so that alpha is about 0.99;
- channel i of group k has an importance b_i (|gamma| of the group's first BatchNorm, else the root
  filter's L1 norm; detached, re-read every step) and a keep probability
  p_i = sigmoid(beta2 * (log b_i - log beta1)), where log beta1 is solved by bisection at every
  forward so that mean_i p_i = alpha_k; dp_i/dalpha_k comes from implicit differentiation of that
  constraint (= sigmoid'_i / mean(sigmoid')), so the group's mean keep probability follows alpha exactly;
- masks m_i ~ Bernoulli(p_i) with a straight-through gradient multiply the outputs of the group's
  producing layers (the norm after a conv, or the conv itself); beta2 rises geometrically over the
  search (2 -> 50) so sampling becomes a near-hard threshold at the end (DSA's "two softenings" and
  variance control);
- the expected cost is a polynomial in the alphas, exact in expectation: a conv whose input channels
  belong to group a and output channels to group b costs F * alpha_a * alpha_b, a depthwise conv
  F * alpha_k, a fixed side counts 1 (params likewise, biases and norms linearly); tested against
  FlopCounterMode on physically pruned models;
- each step updates the weights on 90% of the training data (SGD, masks sampled) and theta on the
  held-out 10% (momentum with one RMS scale shared by all groups, so that the groups' gradients
  keep their relative sizes, which per-coordinate Adam would erase), then projects alpha onto {cost(alpha) <= target_t}: alpha is
  moved against the cost gradient, alpha - nu * dcost/dalpha, with nu found by bisection (ADMM's
  projection step, cost-aware: expensive groups give up more). The target falls from the start cost
  to the budget over the first half of the search (cubic, as AGP), then stays there.
Hardening (``learned``, the allocator): the removal order takes groups' steps in proportion to the
channels each group's alpha removes, so :mod:`prunecli.budget`'s bisection lands on the learned counts
scaled to meet the budget exactly (within the tolerance, never above); each group keeps its channels
with the highest b_i on the searched weights, which are the weights fine-tuning starts from.

Departures from DSA: the projection replaces DSA's ADMM dual updates (simpler, and feasible at every
step rather than at convergence); the budget is met exactly by the shared fit instead of by the
soft constraint alone; the search is short (``--search-epochs``) and counts against the epochs a
comparison gives every method.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

from . import ALLOCATORS, removable_steps


@dataclass(frozen=True)
class SearchConfig:
    epochs: int = 1
    lr: float = 0.01  # weights (SGD, momentum 0.9)
    alpha_lr: float = 0.1  # theta (momentum, one RMS scale shared by all groups)
    alpha_init: float = 0.99
    beta2_start: float = 2.0
    beta2_end: float = 50.0
    target_fraction: float = 0.5  # of the search steps over which the target falls to the budget
    held_out: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--search-epochs {self.epochs} must be >= 1 for --allocation learned")
        if not 0 < self.alpha_init < 1:
            raise ValueError(f"alpha_init {self.alpha_init} must be in (0, 1)")
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
def solve_threshold(u, alpha: float, beta2: float, iterations: int = 60) -> float:
    """log(beta1): the c with mean(sigmoid(beta2 * (u - c))) = alpha (bisection; the mean falls as c rises)."""
    import torch

    lo, hi = float(u.min()) - 40.0 / beta2, float(u.max()) + 40.0 / beta2
    with torch.no_grad():
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if float(torch.sigmoid(beta2 * (u - mid)).mean()) > alpha:
                lo = mid
            else:
                hi = mid
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
            return output * mask.view(*shape)

        return apply

    def sample(self, alpha, beta2: float, generator) -> None:
        """Straight-through Bernoulli masks from the keep probabilities at ``alpha`` (a tensor, maybe with grad)."""
        import torch

        self.current = {}
        for k, g in enumerate(self.groups):
            b = importance(self.model, g, self.roles).clamp_min(1e-12)
            u = b.log() - b.log().mean()
            p = keep_probabilities(u, alpha[k], beta2)
            hard = torch.bernoulli(p.detach(), generator=generator)
            self.current[g.root] = hard + p - p.detach()

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


def _split_loader(loader, held_out: float, seed: int):
    import torch

    dataset = loader.dataset
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(n * held_out)))
    make = lambda idx: torch.utils.data.DataLoader(  # noqa: E731
        torch.utils.data.Subset(dataset, idx), batch_size=loader.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed), num_workers=0)
    return make(order[k:]), make(order[:k])


def _cycle(loader):
    while True:
        yield from loader


def project(alpha, cost, target: float, lo):
    """alpha - nu * dcost/dalpha, clipped to [lo, 1], with the smallest nu >= 0 meeting cost <= target."""
    import torch

    with torch.no_grad():
        if float(cost(alpha)) <= target:
            return alpha
    with torch.enable_grad():
        a = alpha.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(cost(a), a)
    grad = grad / grad.abs().max().clamp_min(1e-30)
    with torch.no_grad():
        step = lambda nu: torch.maximum(torch.minimum(alpha - nu * grad, torch.ones_like(alpha)), lo)  # noqa: E731
        hi = 1.0
        while float(cost(step(hi))) > target and hi < 1e6:
            hi *= 2
        low = 0.0
        for _ in range(50):
            mid = 0.5 * (low + hi)
            if float(cost(step(mid))) > target:
                low = mid
            else:
                hi = mid
        return step(hi)


def search(source_model, example_input, groups, train_loader, metric: str, target: float, config: SearchConfig,
           progress=None) -> SearchResult:
    """Learn per-group keep ratios under ``cost(alpha) <= target`` (``metric`` flops|params, absolute)."""
    import torch

    from ..graph import channel_roles

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = copy.deepcopy(source_model).train()
    roles = channel_roles(model, example_input, groups)
    cost = ExpectedCost(model, example_input, groups, metric, roles=roles)
    lo = torch.tensor([g.min_keep / g.channels for g in groups], dtype=torch.float64)
    init = (config.alpha_init - lo) / (1 - lo)
    theta = torch.nn.Parameter(torch.log(init / (1 - init)).clamp(-10, 10).detach())
    alpha_of = lambda t: lo + (1 - lo) * torch.sigmoid(t)  # noqa: E731
    weights_opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4)
    momentum = torch.zeros_like(theta)
    second = torch.zeros(())  # one second moment for all groups: Adam's per-coordinate scaling would
    # erase the differences between groups' gradients, which are exactly what sets their ratios
    w_loader, a_loader = _split_loader(train_loader, config.held_out, config.seed)
    a_batches = _cycle(a_loader)
    steps = config.epochs * len(w_loader)
    start_cost = float(cost(alpha_of(theta.detach())))
    masks = Masks(model, groups, roles)
    history = []
    task = progress.add_task("learned allocation search", total=steps, info="") if progress is not None else None
    loss_fn = torch.nn.functional.cross_entropy
    try:
        step = 0
        for _ in range(config.epochs):
            for x, y in w_loader:
                frac = step / max(1, steps - 1)
                beta2 = config.beta2_start * (config.beta2_end / config.beta2_start) ** frac
                ramp = min(1.0, step / max(1.0, config.target_fraction * steps))
                target_t = target + (start_cost - target) * (1 - ramp) ** 3
                # weights on the 90%
                masks.sample(alpha_of(theta.detach()).float(), beta2, generator)
                loss = loss_fn(model(x), y)
                weights_opt.zero_grad(set_to_none=True)
                loss.backward()
                weights_opt.step()
                # ratios on the held-out 10%
                xa, ya = next(a_batches)
                alpha = alpha_of(theta)
                masks.sample(alpha.float(), beta2, generator)
                alpha_loss = loss_fn(model(xa), ya)
                theta.grad = None
                alpha_loss.backward()
                weights_opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    grad = theta.grad.detach()
                    momentum.mul_(0.9).add_(grad, alpha=0.1)
                    second = 0.999 * second + 0.001 * float((grad ** 2).mean())
                    scale = math.sqrt(second / (1 - 0.999 ** (step + 1))) + 1e-12
                    theta.sub_(config.alpha_lr * momentum / (1 - 0.9 ** (step + 1)) / scale)
                projected = project(alpha_of(theta.detach()), cost, target_t, lo)
                with torch.no_grad():
                    unit = ((projected - lo) / (1 - lo)).clamp(1e-6, 1 - 1e-6)
                    theta.copy_(torch.log(unit / (1 - unit)))
                    expected = float(cost(alpha_of(theta))) / cost.dense
                if not math.isfinite(float(loss.detach())) or not math.isfinite(float(alpha_loss.detach())):
                    from ..errors import RuntimeFailure

                    raise RuntimeFailure(f"the learned allocation search diverged at step {step} (loss {float(loss.detach())}); "
                                         "lower --lr or use another --allocation")
                history.append({"step": step, "alpha": [round(float(a), 5) for a in alpha_of(theta.detach())],
                                "target_ratio": target_t / cost.dense, "expected_ratio": expected, "beta2": beta2,
                                "loss": float(loss.detach()), "alpha_loss": float(alpha_loss.detach())})
                if task is not None:
                    progress.update(task, advance=1, info=f"loss {float(loss.detach()):.3f}  expected {metric} {expected:.3f}")
                step += 1
    finally:
        masks.remove()
    model.eval()
    final = alpha_of(theta.detach())
    scores = {g.root: importance(model, g, roles).numpy().astype("float64") for g in groups}
    return SearchResult(model, {g.root: float(final[k]) for k, g in enumerate(groups)}, history, scores,
                        time.perf_counter() - started, [g.root for g in groups])


@ALLOCATORS.register("learned", needs="search")
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
