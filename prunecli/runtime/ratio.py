"""Ratios of two models timed interleaved: the statistics a latency verdict can be decided on, their intervals,
and the noise they were measured with. Pure numerics over samples (no onnxruntime here): the measuring process
(:mod:`prunecli.runtime._worker`) runs :func:`measure_ratio`; :mod:`prunecli.runtime.timing` drives it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def measure(models: list, runs: int, block: int = 10, seconds: float | None = None) -> None:
    """Time every model in alternating blocks of ``block`` runs until ``runs`` each, or ``seconds``, whichever
    comes first."""
    deadline = time.perf_counter() + seconds if seconds else None
    while min(len(t.samples_ms) for t in models) < runs:
        for timed in models:
            for _ in range(min(block, runs - len(timed.samples_ms))):
                timed.run_once()
        if deadline is not None and time.perf_counter() >= deadline:
            break


# Statistics a ratio of two interleaved models can be decided on (README "The latency budget"): the deployment
# statistics (what a user's requests see) and the low ones that interference cannot push down. ``block-min`` is the
# median over blocks of each block's fastest run: a slow spell spoils the blocks it falls in, not the statistic.
RATIO_STATS = ("block-min", "min", "p10", "p25", "p50", "p90", "p99", "mean")
REPORTED_STATS = ("p50", "p90")  # reported with every decision, whatever it was decided on


def as_blocks(samples_ms: list, block: int) -> list:
    """Samples timed in blocks of ``block`` runs, as a list of blocks (a last partial block dropped; fewer runs than
    one block are one block)."""
    whole = len(samples_ms) // block * block
    return [samples_ms[i:i + block] for i in range(0, whole, block)] if whole else [list(samples_ms)]


def stat_ms(blocks, stat: str) -> float:
    """One model's ``stat`` in ms from its samples as (blocks, runs per block)."""
    import numpy as np

    a = np.asarray(blocks, dtype=np.float64)
    if stat == "block-min":
        return float(np.median(a.reshape(len(a), -1).min(axis=1)))
    if stat == "min":
        return float(a.min())
    if stat == "mean":
        return float(a.mean())
    if stat.startswith("p") and stat[1:].isdigit():
        return float(np.percentile(a, int(stat[1:])))
    raise ValueError(f"latency statistic {stat!r} is not one of {', '.join(RATIO_STATS)}")


@dataclass(frozen=True)
class Ratio:
    """model / baseline latency for one statistic, with a 95% bootstrap interval over interleaved block pairs.

    ``others``: the reported statistics (p50, p90) from the same runs, each ``{"ratio", "ci95"}``. How noisy the
    machine was while it measured (benchmarks/results/latency_stat.md): ``spread``, the ratio's range across four
    consecutive quarters of the run (noise that drifts), and ``disagreement``, how far the p50 ratio is from the
    block-min one (noise that is steady: another process on the cores slows the typical runs of the two models
    unevenly while their fastest runs still escape it), both relative; ``noise`` is the larger."""

    stat: str
    ratio: float
    low: float
    high: float
    model_ms: float
    baseline_ms: float
    runs: int
    spread: float = 0.0
    others: dict = field(default_factory=dict)
    disagreement: float = 0.0

    @property
    def noise(self) -> float:
        return max(self.spread, self.disagreement)

    @property
    def halfwidth(self) -> float:
        """Half the interval's width, relative to the ratio."""
        return (self.high - self.low) / 2 / self.ratio if self.ratio else float("inf")

    def to_json(self) -> dict:
        return {"stat": self.stat, "ratio": self.ratio, "ci95": [self.low, self.high], "model_ms": self.model_ms,
                "baseline_ms": self.baseline_ms, "runs": self.runs, "spread": self.spread,
                "disagreement": self.disagreement, "noise": self.noise, "others": self.others}

    @staticmethod
    def from_json(doc: dict) -> "Ratio":
        return Ratio(doc["stat"], doc["ratio"], doc["ci95"][0], doc["ci95"][1], doc["model_ms"], doc["baseline_ms"],
                     doc["runs"], doc.get("spread", 0.0), doc.get("others", {}), doc.get("disagreement", 0.0))


def _blocks(model, baseline, block: int):
    import numpy as np

    pairs = min(len(model.samples_ms), len(baseline.samples_ms)) // block
    m = np.asarray(model.samples_ms[:pairs * block], dtype=np.float64).reshape(pairs, block)
    b = np.asarray(baseline.samples_ms[:pairs * block], dtype=np.float64).reshape(pairs, block)
    return m, b


def _ratio(m, b, stat: str) -> float:
    return stat_ms(m, stat) / stat_ms(b, stat)


def _resampled(a, picks, stat: str):
    """``stat`` of ``a`` (blocks, runs per block) for every resample of its blocks (``picks``: draws x blocks)."""
    import numpy as np

    if stat == "block-min":
        return np.median(a.min(axis=1)[picks], axis=1)
    if stat == "min":
        return a.min(axis=1)[picks].min(axis=1)
    if stat == "mean":
        return a.mean(axis=1)[picks].mean(axis=1)
    return np.percentile(a[picks].reshape(len(picks), -1), int(stat[1:]), axis=1)


def ratio_of(model, baseline, stat: str, block: int, seed: int = 0, reported: bool = True) -> Ratio:
    """The ratio of ``stat`` over all runs so far, and its interval from resampling block pairs (each pair ran
    back to back, so machine noise is shared within a pair); with ``reported``, the reported statistics (p50, p90)
    from the same resamples."""
    import numpy as np

    m, b = _blocks(model, baseline, block)
    pairs = len(m)
    picks = np.random.default_rng(seed).integers(0, pairs, (300, pairs))
    intervals = {}
    for s in dict.fromkeys((stat, *(REPORTED_STATS if reported else ()))):
        draws = _resampled(m, picks, s) / _resampled(b, picks, s)
        low, high = np.percentile(draws, [2.5, 97.5])
        intervals[s] = (_ratio(m, b, s), float(low), float(high))
    value, low, high = intervals[stat]
    quarter = pairs // 4
    spread = 0.0
    if quarter >= 2:
        parts = [_ratio(m[i * quarter:(i + 1) * quarter], b[i * quarter:(i + 1) * quarter], stat) for i in range(4)]
        spread = (max(parts) - min(parts)) / value if value else 0.0
    others = {s: {"ratio": r, "ci95": [lo, hi], "model_ms": stat_ms(m, s), "baseline_ms": stat_ms(b, s)}
              for s, (r, lo, hi) in intervals.items() if s in REPORTED_STATS}
    disagreement = abs(_ratio(m, b, "p50") / _ratio(m, b, "block-min") - 1) if pairs else 0.0
    return Ratio(stat, value, low, high, stat_ms(m, stat), stat_ms(b, stat), pairs * block, spread, others,
                 disagreement)


def measure_ratio(model, baseline, stat: str = "p50", *, halfwidth: float = 0.02, block: int = 10,
                  min_runs: int = 60, max_runs: int = 4000, max_seconds: float = 60.0,
                  outside: list | None = None, inside: list | None = None, min_inside: int = 100,
                  coarse: float | None = None) -> Ratio:
    """Time ``model`` and ``baseline`` interleaved until the ratio's 95% interval is within +-``halfwidth`` of it
    (or ``max_runs`` / ``max_seconds`` runs out; the interval then says how sure it is), or as soon as a verdict
    no longer depends on more runs: with ``outside`` ``[low, high]``, the interval lies wholly outside that range (a
    candidate clearly too slow or too fast), with ``inside`` ``[low, high]``, it lies wholly inside it (a candidate
    clearly acceptable; judged after ``min_inside`` runs, as a bootstrap over fewer blocks is too sure of itself).
    With ``coarse`` too, a ratio whose value lies outside ``outside`` needs its interval within +-``coarse`` only:
    it will not be accepted whatever more runs say, and a search needs only its direction and rough size.
    Runs where the models live (in the measuring process: see :class:`Runtime.ratio`); the
    interval is checked every few blocks."""
    deadline = time.perf_counter() + max_seconds
    step = block
    while True:
        target = min(len(model.samples_ms), len(baseline.samples_ms)) + step
        measure([model, baseline], target, block)
        runs = min(len(model.samples_ms), len(baseline.samples_ms))
        if runs >= min_runs:
            estimate = ratio_of(model, baseline, stat, block, reported=False)
            off = outside is not None and not outside[0] <= estimate.ratio <= outside[1]
            judged = ((outside is not None and (estimate.low > outside[1] or estimate.high < outside[0]))
                      or (inside is not None and runs >= min_inside and inside[0] <= estimate.low
                          and estimate.high <= inside[1])
                      or (off and coarse is not None and estimate.halfwidth <= coarse))
            if judged or estimate.halfwidth <= halfwidth or runs >= max_runs or time.perf_counter() > deadline:
                return ratio_of(model, baseline, stat, block)
            step = min(max(block, runs // 4 // block * block), max_runs - runs)
