"""Fit a removal order to a latency budget, by measurement.

The latency model (:mod:`prunecli.runtime.latency_model`) predicts, for every prefix ``t`` of the removal order, the
whole model's latency; the fit starts where the prediction reaches the aim (``margin`` below the target) and
then measures: each candidate is exported and timed with onnxruntime interleaved with the dense model until the
ratio's 95% interval is within +-``halfwidth``. The next candidate corrects the prediction by the measured
error (a secant step on the prediction; once both ends of the bracket are measured, their errors interpolated
along the order), bracketed by what was measured too slow and too fast, bisecting when a correction does not move
or two probes did not halve the bracket. A plan is accepted when its measured value is at most ``1 - margin`` of the
target, at least ``1 - window`` of it, and its interval's upper end is within the target.

An unreachable target (every step applied is still too slow, measured) is a usage error, raised before any
fine-tuning or export; a target no plan lands on within the window is BudgetNotMet naming the closest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prunecli.core.errors import BudgetNotMet, UsageError


@dataclass
class Probe:
    t: int
    predicted: float  # in the target's unit (fraction of dense, or ms)
    measured: float
    high: float  # upper end of the 95% interval
    ratio: object  # latency.Ratio

    def to_json(self) -> dict:
        return {"steps": self.t, "predicted": self.predicted, "measured": self.measured, "ci95_high": self.high,
                **{f"ratio_{k}": v for k, v in self.ratio.to_json().items()}}


@dataclass
class LatencyFit:
    t: int
    counts: dict
    probe: Probe
    probes: list = field(default_factory=list)


def fit_latency(counts_after, steps: int, target: float, predict, measure, *, t_min: int = 0, margin: float = 0.015,
                window: float = 0.05, max_probes: int = 12, unit: str = "of dense", neighbours=None,
                unreachable_hint: str = "") -> LatencyFit:
    """The prefix of the order (its length ``t``) whose measured latency lands in [1 - window, 1 - margin] x target.

    When two adjacent prefixes straddle the window (one step of the order is too coarse), single-group
    adjustments (``neighbours(counts)``: the counts one step away, each group) of both are ranked by the
    prediction, corrected by the measured error, and the three closest to the aim are measured.

    ``counts_after(t)`` gives the counts of prefix t; ``predict(counts)`` and ``measure(counts)`` return the value
    in the target's unit, ``measure`` as (value, interval high, Ratio). ``t_min``: the least prefix other
    budgets (FLOPs, params) allow. Unreachable (exit 2): the deepest plan, measured when the prediction says the
    target is out of reach or after two probes measured too slow with none fast enough, is too slow;
    ``unreachable_hint`` ends that message.
    """
    aim, upper, lower = target * (1 - margin * 2), target * (1 - margin), target * (1 - window)
    predicted = {}

    def pred(t: int) -> float:
        if t not in predicted:
            predicted[t] = predict(counts_after(t))
        return predicted[t]

    def first_below(value: float, lo: int, hi: int, scale=lambda t: 1.0) -> int:
        """The smallest t in [lo, hi] whose prediction (times ``scale(t)``) is at most ``value`` (hi if none)."""
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid) * scale(mid) <= value:
                hi = mid
            else:
                lo = mid + 1
        return lo

    probes: list[Probe] = []

    def probe(t: int) -> Probe:
        value, high, ratio = measure(counts_after(t))
        p = Probe(t, pred(t), value, high, ratio)
        probes.append(p)
        return p

    def check_reachable() -> Probe:
        """Measure the deepest plan (once); a usage error when even it is too slow."""
        deepest = next((q for q in probes if q.t == steps), None) or probe(steps)
        if deepest.measured > target:
            raise UsageError(
                f"--latency target {target:.4g} {unit} is not reachable: with every channel step applied the model "
                f"measures {deepest.measured:.4g} {unit} (predicted {deepest.predicted:.4g}); give a larger target, "
                f"or lower --round-to / --min-channels / --max-group-prune's floor to reach further{unreachable_hint}"
            )
        return deepest

    if pred(steps) > target:
        check_reachable()
    too_slow, too_fast = t_min - 1, steps + 1  # measured bounds: t <= too_slow misses, t >= too_fast overshoots
    t = max(t_min, first_below(aim, t_min, steps))
    widths: list[int] = []  # the bracket's width after each probe
    for _ in range(max_probes):
        p = next((q for q in probes if q.t == t), None) or probe(t)
        if p.measured <= upper and p.high <= target and p.measured >= lower:
            return LatencyFit(t, counts_after(t), p, probes)
        if p.measured > upper or p.high > target:
            too_slow = max(too_slow, t)
            if too_fast > steps and sum(q.t >= 0 and q.measured > upper for q in probes) >= 2:
                deepest = check_reachable()  # the prediction keeps missing, nothing measured fast enough: is any plan?
                if upper >= deepest.measured >= lower and deepest.high <= target:
                    return LatencyFit(steps, counts_after(steps), deepest, probes)
                if deepest.measured < lower:
                    too_fast = steps
        else:
            too_fast = min(too_fast, t)
            if t == t_min and p.high <= target:
                # the least pruning allowed is already fast enough (an INT8 model can be): pruning more would only
                # lose accuracy, and pruning to be slower cannot be the aim
                return LatencyFit(t, counts_after(t), p, probes)
        if too_fast - too_slow <= 1:
            adjusted = _adjust(too_slow, too_fast, counts_after, neighbours, predict, measure, probes, steps, t_min,
                               aim, upper, lower, target)
            if adjusted is not None:
                return adjusted
            break
        widths.append(too_fast - too_slow)
        guess = first_below(aim, max(t_min, too_slow + 1), min(steps, too_fast - 1),
                            _correction(probes, p, too_slow, too_fast))
        stalled = len(widths) >= 3 and widths[-1] * 2 > widths[-3]  # two probes did not halve the bracket
        if stalled or not too_slow < guess < too_fast or guess == t:
            guess = (too_slow + too_fast) // 2
            if guess <= max(too_slow, t_min - 1) or guess >= too_fast:
                break
        t = guess
    meeting = [q for q in probes if q.high <= target]
    if meeting and t_min > 0 and min(q.t for q in meeting) <= t_min:
        # the other budgets bind: the least pruning they allow is already fast enough
        best = min(meeting, key=lambda q: q.t)
        return LatencyFit(best.t, counts_after(best.t), best, probes)
    closest = max(meeting, key=lambda q: q.measured) if meeting else min(probes, key=lambda q: q.measured)
    raise BudgetNotMet(
        f"no plan measured within {window:.0%} below --latency target {target:.4g} {unit}: the closest measures "
        f"{closest.measured:.4g} {unit} (95% interval up to {closest.high:.4g}) "
        f"({f'{closest.t} channel steps of the order' if closest.t >= 0 else 'a single-group adjustment'}); "
        "the steps are too coarse for the machine's noise: use a smaller --round-to, a slightly different target, "
        "or measure on a quieter machine"
    )


def _correction(probes, last, too_slow: int, too_fast: int):
    """measured / predicted as a function of t: interpolated linearly between the two measured ends of the bracket
    when both are measured (the table's error drifts along the order, e.g. an INT8 model's), else the last probe's."""
    ratios = {q.t: q.measured / q.predicted for q in probes if q.t >= 0 and q.predicted > 0}
    if too_slow in ratios and too_fast in ratios:
        a, b = too_slow, too_fast
        return lambda t: ratios[a] + (ratios[b] - ratios[a]) * (t - a) / (b - a)
    constant = last.measured / last.predicted if last.predicted > 0 else 1.0
    return lambda t: constant


def _adjust(too_slow, too_fast, counts_after, neighbours, predict, measure, probes, steps, t_min, aim, upper, lower,
            target, tries: int = 8):
    """A plan one or two group-steps away from the two prefixes that straddle the window, or None.

    Candidates are ranked by their prediction corrected by the measured error of the closest measured plan; each
    measurement updates that correction (it is local: the table's error drifts along the order)."""
    if neighbours is None:
        return None
    near = [q for q in probes if q.t in (too_slow, too_fast) and q.predicted > 0]
    if not near:
        return None
    correction = sum(q.measured / q.predicted for q in near) / len(near)
    starts = [counts_after(t) for t in (too_slow, too_fast) if t_min <= t <= steps]
    candidates, seen = [], set()
    for start in starts:
        for once in neighbours(start):
            for counts in [once] + neighbours(once):
                key = tuple(sorted(counts.items()))
                if key not in seen:
                    seen.add(key)
                    candidates.append((predict(counts), counts))
    for _ in range(tries):
        pending = [c for c in candidates if c[1] is not None]
        if not pending:
            break
        index = min(range(len(candidates)), key=lambda i: abs(candidates[i][0] * correction - aim)
                    if candidates[i][1] is not None else float("inf"))
        predicted, counts = candidates[index]
        candidates[index] = (predicted, None)
        value, high, ratio = measure(counts)
        p = Probe(-2, predicted, value, high, ratio)
        probes.append(p)
        if value <= upper and high <= target and value >= lower:
            return LatencyFit(-2, counts, p, probes)
        if predicted > 0:
            correction = value / predicted
    return None
