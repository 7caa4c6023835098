"""Fit a removal order to a budget exactly.

Costs are exact: :class:`CostOracle` prunes a copy of the model on PyTorch's ``meta`` device (shapes, no data)
to the candidate channel counts and counts it with FlopCounterMode, which gives the same FLOPs and params as the
real pruned model; :class:`AnalyticOracle` evaluates the cost polynomials (:mod:`prunecli.graph.polynomial`) in
about a millisecond instead, and the plan it fits is then checked with one meta-copy count (a model whose costs
the polynomial does not capture is fitted again on the meta copy).

The search:
1. feasibility: every step of the order applied; if a budget still does not hold, the budget is
   unreachable (exit 2, before any work, naming the smallest reachable value);
2. bisection over the number ``t`` of steps applied: the smallest ``t`` whose plan meets every budget;
3. adjustment: while the binding budget has slack beyond the tolerance, give one step back to the
   group whose step costs the most that still fits (candidates ranked by an estimate, each one measured).
The result is at most the target and, for the binding budget, within ``tolerance`` below it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from prunecli.core.errors import BudgetNotMet, RuntimeFailure, UsageError
from prunecli.graph.cost import count_flops, count_params
from prunecli.graph.plans import shape_removal
from prunecli.graph.shrink import remove_channels_


class CostOracle:
    """FLOPs and params of the model pruned to given per-group channel counts (cached, meta device)."""

    def __init__(self, model, example_input, groups) -> None:
        self._meta = copy.deepcopy(model).to("meta")
        self._x = example_input.to("meta")
        self._groups = list(groups)
        self._cache: dict[tuple, dict[str, int]] = {}
        self.evaluations = 0

    def __call__(self, counts: dict[str, int]) -> dict[str, int]:
        key = tuple(sorted(counts.items()))
        if key not in self._cache:
            model = copy.deepcopy(self._meta)
            try:
                remove_channels_(model, self._x, shape_removal(self._groups, counts))
                flops = count_flops(model, self._x)
            except Exception as exc:  # noqa: BLE001 - each group alone passed the graph stage's trial
                detail = str(exc).splitlines()[0] if str(exc) else ""
                raise RuntimeFailure(
                    f"pruning these groups together breaks the model's forward pass ({type(exc).__name__}: {detail}), "
                    "though each group alone does; --ignore the layers the error involves (see `prunecli inspect`) and retry"
                ) from exc
            self._cache[key] = {"flops": flops, "params": count_params(model)}
            self.evaluations += 1
        return self._cache[key]


class AnalyticOracle:
    """FLOPs and params of given per-group channel counts from the cost polynomials (same interface as
    :class:`CostOracle`); :meth:`exact` checks a plan against the meta-copy count."""

    def __init__(self, model, example_input, groups) -> None:
        from prunecli.graph.groups import channel_roles
        from prunecli.graph.polynomial import ExpectedCost

        self._groups = list(groups)
        roles = channel_roles(model, example_input, self._groups)
        self._polynomials = {m: ExpectedCost(model, example_input, self._groups, m, roles=roles)
                             for m in ("flops", "params")}
        self._meta = CostOracle(model, example_input, self._groups)
        self._cache: dict[tuple, dict[str, int]] = {}
        self.evaluations = 0

    def __call__(self, counts: dict[str, int]) -> dict[str, int]:
        key = tuple(sorted(counts.items()))
        if key not in self._cache:
            ratios = [counts[g.root] / g.channels for g in self._groups]
            self._cache[key] = {m: int(round(p.at(ratios))) for m, p in self._polynomials.items()}
            self.evaluations += 1
        return self._cache[key]

    def exact(self, counts: dict[str, int]) -> bool:
        """Whether the polynomial's cost of ``counts`` is the meta-copy count's (raises as CostOracle does when
        the plan breaks the forward pass)."""
        return self(counts) == self._meta(counts)

    @property
    def meta(self) -> CostOracle:
        return self._meta


def cost_oracle(model, example_input, groups):
    """The analytic oracle, or the meta-copy one where the polynomials cannot be built for this model."""
    try:
        return AnalyticOracle(model, example_input, groups)
    except Exception:  # noqa: BLE001 - an architecture the channel-role trace does not follow: exact counting stays
        return CostOracle(model, example_input, groups)


@dataclass
class Fit:
    counts: dict[str, int]
    cost: dict[str, int]
    evaluations: int


def counts_after(groups, order: list[str], t: int) -> dict[str, int]:
    """Per-group channel counts after the first ``t`` steps of a removal order."""
    counts = {g.root: g.channels for g in groups}
    step = {g.root: g.step for g in groups}
    for root in order[:t]:
        counts[root] -= step[root]
    return counts


def _meets(cost: dict[str, int], targets: dict[str, int]) -> bool:
    return all(cost[m] <= t for m, t in targets.items())


def _binding_gap(cost: dict[str, int], targets: dict[str, int]) -> float:
    """Relative slack of the tightest budget (0 = exactly on target)."""
    return min((t - cost[m]) / t for m, t in targets.items())


def fit_budget(groups, order: list[str], targets: dict[str, int], oracle: CostOracle, dense: dict[str, int],
               *, tolerance: float = 0.01, hint: str = "", prefer: dict | None = None) -> Fit:
    """Per-group channel counts meeting every target, the binding one within ``tolerance`` below it.
    ``prefer`` ({root: wanted count}) steers which groups get steps back when closing the last gap."""
    full = oracle(counts_after(groups, order, len(order)))
    for metric, target in targets.items():
        if full[metric] > target:
            raise UsageError(
                f"--{metric} target {target:,} ({target / dense[metric]:.3f} of dense) is not reachable: the smallest is "
                f"{full[metric]:,} ({full[metric] / dense[metric]:.3f}) {hint}"
            )
    lo, hi = 0, len(order)  # invariant: plan(hi) meets the budget; plan(lo) does not (unless lo == 0 does)
    if _meets(oracle(counts_after(groups, order, 0)), targets):
        hi = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _meets(oracle(counts_after(groups, order, mid)), targets):
            hi = mid
        else:
            lo = mid
    counts = counts_after(groups, order, hi)
    cost = oracle(counts)

    by_root = {g.root: g for g in groups}
    start = (counts, cost)
    for preference in ([prefer, None] if prefer else [None]):  # a preference that cannot close the gap gives way
        counts, cost = _refill(*start, by_root, targets, oracle, dense["flops"], tolerance, preference)
        for _ in range(3):  # swaps: steps back to one group, steps off another, when refilling alone stalls
            if _binding_gap(cost, targets) <= tolerance:
                break
            swapped = _best_swap(counts, cost, by_root, targets, oracle)
            if swapped is None:
                break
            counts, cost = _refill(*swapped, by_root, targets, oracle, dense["flops"], tolerance, preference)
        if _binding_gap(cost, targets) <= tolerance:
            break
    if _binding_gap(cost, targets) > tolerance:
        worst = {m: cost[m] / t for m, t in targets.items()}
        raise BudgetNotMet(
            f"no plan lands within {tolerance:.0%} below the budget: the closest one reaches "
            f"{', '.join(f'{m} {v:.4f} of target' for m, v in worst.items())}, because the channel steps are coarse; "
            "use a smaller --round-to or --min-channels, or a slightly different budget"
        )
    return Fit(counts=counts, cost=cost, evaluations=oracle.evaluations)


def _estimate(group, keep: int, dense_flops: int) -> float:
    """Rough FLOPs of one step of ``group`` at ``keep`` channels (for ranking candidates only)."""
    return group.flops_share * dense_flops * group.step / group.channels * (keep / group.channels)


def _refill(counts, cost, by_root, targets, oracle, dense_flops, tolerance, prefer=None):
    """Give steps back to groups until within tolerance or nothing fits: the largest step that still fits
    first or, with ``prefer`` ({root: wanted channel count}, e.g. learned ratios), the group furthest
    below what it wants (in steps) first."""
    tried_out: set[tuple] = set()
    while _binding_gap(cost, targets) > tolerance * 0.25:
        slack = min(t - cost[m] for m, t in targets.items())
        candidates = sorted(
            ((_estimate(by_root[r], k, dense_flops), r) for r, k in counts.items()
             if k < by_root[r].channels and (r, k) not in tried_out),
            reverse=True,
        )
        fitting = [c for c in candidates if c[0] <= 2 * slack] or candidates
        if prefer:
            fitting.sort(key=lambda c: (prefer.get(c[1], 0.0) - counts[c[1]]) / by_root[c[1]].step, reverse=True)
        accepted = False
        for _, root in fitting[:24]:
            trial = dict(counts)
            trial[root] += by_root[root].step
            trial_cost = oracle(trial)
            if _meets(trial_cost, targets):
                counts, cost, accepted = trial, trial_cost, True
                break
            tried_out.add((root, counts[root]))
        if not accepted:
            break
    return counts, cost


def _best_swap(counts, cost, by_root, targets, oracle, measured: int = 24, max_up: int = 3):
    """The (counts, cost) of the best single swap (1..``max_up`` steps back to one group, as many steps off
    another as that takes) that meets the budget with less slack, or None. Uneven swaps matter when the
    groups' steps differ in cost (a residual stream's step can cost several inner-conv steps).

    Each group's up deltas (per step count) and single-step down delta are measured once; for every pair
    the number of steps off is estimated from the down delta, pairs are ranked by their estimated slack, and
    the ``measured`` most promising are measured exactly, one step either side of the estimate included
    (groups interact through the convs that join them)."""
    metric = min(targets, key=lambda m: (targets[m] - cost[m]) / targets[m])  # the binding budget
    slack = targets[metric] - cost[metric]
    up, down = {}, {}
    for root, k in counts.items():
        step = by_root[root].step
        for i in range(1, max_up + 1):
            if k + i * step <= by_root[root].channels:
                up[(root, i)] = oracle({**counts, root: k + i * step})[metric] - cost[metric]
        if k - step >= by_root[root].min_keep:
            down[root] = oracle({**counts, root: k - step})[metric] - cost[metric]
    pairs = []
    for (u, i), du in up.items():
        for d, dd in down.items():
            if u == d or dd >= 0:
                continue
            j = max(1, math.ceil((du - slack) / -dd))
            if counts[d] - j * by_root[d].step >= by_root[d].min_keep:
                pairs.append((slack - (du + j * dd), u, i, d, j))
    pairs = sorted(p for p in pairs if p[0] >= -0.05 * abs(slack))
    best, best_gap = None, _binding_gap(cost, targets)
    for _, u, i, d, j in pairs[:measured]:
        for extra in (-1, 0, 1):  # the fewest steps off that meet the budget, around the estimate
            if j + extra < 1:
                continue
            trial = dict(counts)
            trial[u] += i * by_root[u].step
            trial[d] -= (j + extra) * by_root[d].step
            if trial[d] < by_root[d].min_keep:
                break
            trial_cost = oracle(trial)
            if _meets(trial_cost, targets):
                if _binding_gap(trial_cost, targets) < best_gap:
                    best, best_gap = (trial, trial_cost), _binding_gap(trial_cost, targets)
                break
    return best
