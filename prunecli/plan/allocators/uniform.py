"""Uniform allocation: one prune fraction for every group.

The k-th step of a group with n channels is removed when the common fraction reaches k*step/n, so
the removal order interleaves groups in proportion to their size. Rounding to steps makes a pure
uniform ratio miss a budget by up to one step of the largest group; the budget search then adjusts
single groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunecli.graph.groups import removable_steps
from prunecli.plan.allocators._registry import ALLOCATORS, Allocation


@dataclass(frozen=True)
class Uniform(Allocation):
    """``--allocation uniform``: every group loses the same fraction (the default without a latency budget)."""


@ALLOCATORS.register("uniform", config=Uniform)
def uniform(groups, scores, allocation: Uniform, metric: str = "flops", evidence=None) -> list[str]:
    events = []
    for index, group in enumerate(groups):
        for k in range(1, removable_steps(group) + 1):
            events.append((k * group.step / group.channels, index, group.root))
    events.sort()
    return [root for _, _, root in events]
