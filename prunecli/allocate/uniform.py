"""Uniform allocation: one prune fraction for every group.

The k-th step of a group with n channels is removed when the common fraction reaches k*step/n, so
the removal order interleaves groups in proportion to their size. Rounding to steps makes a pure
uniform ratio miss a budget by up to one step of the largest group; the budget search then adjusts
single groups.
"""

from __future__ import annotations

from . import ALLOCATORS, removable_steps


@ALLOCATORS.register("uniform")
def uniform(groups, scores, config, evidence=None) -> list[str]:
    events = []
    for index, group in enumerate(groups):
        for k in range(1, removable_steps(group) + 1):
            events.append((k * group.step / group.channels, index, group.root))
    events.sort()
    return [root for _, _, root in events]
