"""Budget targets: FLOPs/params (fraction or count) and latency (fraction of dense or a time), and how latency
is measured for a budget. Frozen; they validate on construction and name the flag, the value and what is allowed."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prunecli.core.checks import require_finite

SUFFIXES = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _with_suffix(number: float) -> str:
    """``2.1e9`` -> ``2.1G``; a small number gets the suffixes it may have meant (``2`` -> ``2K, 2M or 2G``)."""
    for suffix, scale in sorted(SUFFIXES.items(), key=lambda kv: -kv[1]):
        if number >= scale:
            return f"{number / scale:g}{suffix}"
    return f"{number:g}K, {number:g}M or {number:g}G"


@dataclass(frozen=True)
class BudgetTarget:
    """A budget on one metric: a fraction of the dense model in (0, 1], or an absolute count."""

    metric: str  # "flops" | "params"
    value: float
    absolute: bool = False

    def __post_init__(self) -> None:
        if self.metric not in ("flops", "params"):
            raise ValueError(f"budget metric {self.metric!r} must be 'flops' or 'params'")
        if not self.absolute and not 0 < self.value <= 1:
            raise ValueError(f"--{self.metric} {self.value}: a fraction must be in (0, 1]")
        if self.absolute and self.value <= 0:
            raise ValueError(f"--{self.metric} {self.value}: an absolute budget must be positive")

    def resolve(self, dense: int) -> int:
        """The target as an absolute count for a dense model costing ``dense``."""
        return int(self.value) if self.absolute else int(self.value * dense)

    @staticmethod
    def parse(metric: str, text: str) -> "BudgetTarget":
        """``0.5`` -> fraction of dense; ``2.1G``, ``5M``, ``300K`` -> absolute count (a count needs a suffix)."""
        raw = text.strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTkmgt]?)", raw)
        if not m:
            raise ValueError(f"--{metric} {text!r} is not a budget; write a fraction like 0.5 or a count like 2.1G, 5M")
        number, suffix = float(m.group(1)), m.group(2).upper()
        if suffix:
            return BudgetTarget(metric, number * SUFFIXES[suffix], absolute=True)
        if number > 1:
            raise ValueError(f"--{metric} {text}: a bare number is a fraction of the dense model and must be in (0, 1]; "
                             f"for an absolute count add a suffix, e.g. {_with_suffix(number)}")
        return BudgetTarget(metric, number)

    def describe(self) -> str:
        return f"{self.value:g}" if self.absolute else f"{self.value:g} of dense"


TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
LATENCY_STATS = ("block-min", "min", "p10", "p50", "p90")  # a subset of prunecli.runtime.ratio.RATIO_STATS


@dataclass(frozen=True)
class LatencyTarget:
    """A latency budget: a fraction of the dense model's measured latency in (0, 1), or milliseconds."""

    value: float
    absolute: bool = False  # True: ``value`` is milliseconds

    def __post_init__(self) -> None:
        require_finite("--latency", self.value, 0)
        if not self.absolute and not 0 < self.value < 1:
            raise ValueError(f"--latency {self.value:g}: a fraction of the dense model's latency must be in (0, 1); "
                             "for an absolute budget add a unit, e.g. 12ms")

    metric = "latency"

    @staticmethod
    def parse(text: str) -> "LatencyTarget":
        """``0.6`` -> fraction of dense; ``12ms``, ``800us``, ``0.02s`` -> milliseconds."""
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(us|ms|s)?", text.strip().lower())
        if not m:
            raise ValueError(f"--latency {text!r} is not a latency budget; write a fraction of the dense model's "
                             "latency like 0.6, or a time like 12ms")
        number, unit = float(m.group(1)), m.group(2)
        if unit:
            return LatencyTarget(number * TIME_UNITS[unit], absolute=True)
        if number >= 1:
            raise ValueError(f"--latency {text}: a bare number is a fraction of the dense model's latency and must be "
                             f"in (0, 1); for a time add a unit, e.g. {number:g}ms")
        return LatencyTarget(number)

    def describe(self) -> str:
        return f"{self.value:g} ms" if self.absolute else f"{self.value:g} of dense"

    def resolve(self, dense_ms: float) -> float:
        """The target in milliseconds for a dense model measured at ``dense_ms``."""
        return self.value if self.absolute else self.value * dense_ms


@dataclass(frozen=True)
class LatencySettings:
    """How the latency budget is measured: as `prunecli bench` measures (provider, threads, batch), on ``stat``.
    ``halfwidth``: the 95% interval of the final ratio must be within +-this of it; ``margin``: the fit aims at
    least this far below the target, so that a later `bench` at the same target passes (README: latency budget)."""

    provider: str = "cpu"
    threads: int | None = None  # None: physical cores
    batch: int | None = None  # None: the input shape's
    stat: str = "p50"
    halfwidth: float = 0.01
    margin: float = 0.015
    window: float = 0.05  # achieved must be within this below the target

    def __post_init__(self) -> None:
        from prunecli.runtime.timing import RuntimeConfig

        RuntimeConfig(self.provider, self.threads, self.batch)  # validates provider, threads, batch
        if self.stat not in LATENCY_STATS:
            raise ValueError(f"--latency-stat {self.stat!r} is not one of {', '.join(LATENCY_STATS)}")
        for name in ("halfwidth", "margin", "window"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value < 0.5):
                raise ValueError(f"latency {name} {value} must be in (0, 0.5)")
        if self.margin >= self.window:
            raise ValueError(f"latency margin {self.margin} must be below the window {self.window}")

    def runtime(self, warmup: int = 5):
        from prunecli.runtime.timing import RuntimeConfig

        return RuntimeConfig(self.provider, self.threads, self.batch, warmup=warmup)
