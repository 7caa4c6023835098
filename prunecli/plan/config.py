"""What the plan stage reads: budgets, how channels are ranked, the allocation (its config's type is the
allocator), the constraints, and how latency is measured. Frozen; validates on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from prunecli.plan.allocators import ALLOCATORS, Allocation, Latency, Uniform
from prunecli.plan.targets import BudgetTarget, LatencySettings, LatencyTarget
from prunecli.runtime.quantize import QuantizeConfig

SHARED_FIELDS = ("criterion", "seed")  # an allocation that scans or searches ranks and seeds as --criterion/--seed


@dataclass(frozen=True)
class PlanConfig:
    """Budgets (at least one), the channel ranking (``criterion``), the ``allocation`` (``Uniform()``,
    ``Global(max_group_prune=0.9)``, ``Latency()``, ``Sensitivity(...)``, ``Learned(...)``; None: ``Latency()`` with
    a latency budget, else ``Uniform()``), the constraints and the stage bounds."""

    flops: BudgetTarget | None = None
    params: BudgetTarget | None = None
    latency: LatencyTarget | None = None
    criterion: str = "l1"
    allocation: Allocation | None = None
    round_to: int | None = None  # None: the preset's
    ignore: tuple[str, ...] = ()
    min_channels: int = 1
    prune_heads: bool = False  # attention: remove whole heads instead of the same dimensions from every head
    seed: int = 0
    tolerance: float = 0.01  # achieved must be within this relative gap below the target
    opset: int = 18
    timeout: float = 600.0  # seconds each bounded stage (graph, scores, budget fit, shrink, export) may take; 0: none
    latency_settings: LatencySettings = LatencySettings()
    quantize: QuantizeConfig | None = None  # INT8 after pruning; None: fp32 only

    def __post_init__(self) -> None:
        if self.flops is None and self.params is None and self.latency is None:
            raise ValueError("give a budget: --flops F, --params P and/or --latency L (fractions like 0.5, counts like "
                             "2.1G, times like 12ms)")
        allocation = self.allocation
        if allocation is None:
            allocation = Latency() if self.latency is not None else Uniform()
        if isinstance(allocation, str):
            raise ValueError(f"allocation={allocation!r} is a name: pass its config, e.g. "
                             f"{ALLOCATORS.config(allocation).__name__}() from prunecli.plan.allocators")
        ALLOCATORS.name_of(allocation)  # TypeError naming the config classes for anything else
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(allocation) if f.name in SHARED_FIELDS}
        if shared:
            allocation = dataclasses.replace(allocation, **shared)
        object.__setattr__(self, "allocation", allocation)
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"--round-to {self.round_to} must be >= 1")
        if self.min_channels < 1:
            raise ValueError(f"--min-channels {self.min_channels} must be >= 1")
        if not (math.isfinite(self.tolerance) and 0 < self.tolerance < 0.5):
            raise ValueError(f"tolerance {self.tolerance} must be in (0, 0.5)")
        if not (math.isfinite(self.timeout) and self.timeout >= 0):
            raise ValueError(f"--timeout {self.timeout} must be seconds >= 0 (0: no bound)")
        if not 7 <= self.opset <= 23:
            raise ValueError(f"--opset {self.opset} must be between 7 and 23 (18 is the default)")

    @property
    def allocation_name(self) -> str:
        return ALLOCATORS.name_of(self.allocation)

    def budgets(self) -> list[BudgetTarget]:
        return [b for b in (self.flops, self.params) if b is not None]

    @property
    def fit_metric(self) -> str:
        """The FLOPs/params budget the allocation is fitted on: FLOPs when given (or with latency alone)."""
        return "params" if self.flops is None and self.params is not None else "flops"
