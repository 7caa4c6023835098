"""Sensitivity allocation: spend the budget where a sensitivity scan says pruning hurts least.

Input: one curve per group from :mod:`prunecli.plan.allocators.sensitivity.scan` - the metric's degradation d_g(r) and
the FLOPs (or params, for a params-only budget) saved s_g(r) when the group alone loses r channels.

Algorithm (a greedy knapsack on the convex hull, as in rate-distortion bit allocation):
1. per group, clean the curve: degradation below zero (noise, or pruning that helps) counts as 0,
   and it is made non-decreasing in r (removing more channels never counts as cheaper);
2. take the lower convex hull of the points (s_g(r), d_g(r)), including (0, 0); the slope of a hull
   segment is "metric lost per FLOP saved" over that stretch;
3. every removable step of every group (step = the group's channel step) gets the slope of the hull
   segment it falls on (its position interpolated linearly between measured counts); steps beyond
   the largest measured count get an infinite slope, so they come last, in order of depth;
4. the removal order is all steps sorted by slope (ties: the smaller fraction of the group first,
   which spreads free removals like the uniform allocator).
Taking the first t steps is optimal for the continuous relaxation of "minimise the summed
degradation subject to the saving" when the groups' degradations add up; :mod:`prunecli.plan.budget` then
searches t (and adjusts single groups) so the budget is met within its tolerance.

The additivity assumption is the known weakness of per-layer scans (pruning two groups together can
hurt more than the sum); fine-tuning afterwards recovers much of that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prunecli.graph.groups import removable_steps
from prunecli.plan.allocators._registry import ALLOCATORS, Allocation

DEFAULT_LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))
METRICS = ("top1", "loss")


@dataclass(frozen=True)
class Sensitivity(Allocation):
    """``--allocation sensitivity``, and the settings of its scan (`prunecli sensitivity`): ``levels`` (fractions of
    each group removed), ``metric``: ``loss`` (cross-entropy; smooth, the default) or ``top1`` (percent), ``batches``
    of validation data per point; ``criterion`` and ``seed`` follow --criterion and --seed."""

    levels: tuple[float, ...] = DEFAULT_LEVELS
    criterion: str = "l1"
    metric: str = "loss"
    batches: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("--levels is empty; give fractions like 0.1,0.3,0.5,0.7,0.9")
        if any(not 0 < level < 1 for level in self.levels):
            raise ValueError(f"--levels {','.join(map(str, self.levels))}: every level must be a fraction in (0, 1)")
        if list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"--levels {','.join(map(str, self.levels))}: list each level once, ascending")
        if self.metric not in METRICS:
            raise ValueError(f"--metric {self.metric!r} must be one of {', '.join(METRICS)}")
        if self.batches < 1:
            raise ValueError(f"--batches {self.batches} must be >= 1")
        if self.criterion != "random":  # the seed changes nothing else: one cache entry for every seed
            object.__setattr__(self, "seed", 0)

    @staticmethod
    def parse_levels(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"--levels {text!r} is not a list of fractions; write e.g. 0.1,0.3,0.5,0.7,0.9") from None


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (Andrew's monotone chain, lower half)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def step_slopes(curve, group, saved_key: str = "flops_saved") -> list[float]:
    """Metric lost per unit saved for each removable step of ``group`` (in removal order)."""
    measured = {0: (0.0, 0.0)}
    for p in curve.points:
        measured[p.removed] = (float(getattr(p, saved_key)), float(p.degradation))
    removed = sorted(measured)
    saved = np.array([measured[r][0] for r in removed])
    degradation = np.maximum.accumulate(np.maximum(0.0, [measured[r][1] for r in removed]))
    hull = _lower_hull(list(zip(saved, degradation)))
    slopes = []
    for k in range(1, removable_steps(group) + 1):
        r = k * group.step
        if r > removed[-1]:
            slopes.append(math.inf)
            continue
        s = float(np.interp(r, removed, saved))
        for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
            if s <= x2 + 1e-9:
                slopes.append((y2 - y1) / (x2 - x1) if x2 > x1 else (0.0 if y2 <= y1 else math.inf))
                break
        else:
            slopes.append(math.inf)
    return slopes


@ALLOCATORS.register("sensitivity", config=Sensitivity, needs="sensitivity")
def sensitivity(groups, scores, allocation: Sensitivity, metric: str = "flops", evidence=None) -> list[str]:
    scan = (evidence or {}).get("sensitivity")
    if scan is None:
        raise ValueError("the sensitivity allocator needs a scan (plan_model runs it when --data is given)")
    saved_key = f"{metric}_saved"
    roots = {c.root for c in scan.curves}
    events = []
    for index, group in enumerate(groups):
        if group.root not in roots:  # nothing removable at the scanned levels: prune it last
            slopes = [math.inf] * removable_steps(group)
        else:
            slopes = step_slopes(scan.curve(group.root), group, saved_key)
        for k, slope in enumerate(slopes, start=1):
            events.append((slope, k * group.step / group.channels, index, group.root))
    events.sort()
    return [root for *_, root in events]
