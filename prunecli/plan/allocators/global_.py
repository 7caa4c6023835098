"""Global allocation: channels ranked across groups by normalised importance.

Scores are divided by their group's mean (Torch-Pruning's default normaliser) so that groups of
different layer types compare. A group's k-th step is removed at the score of the highest-scoring
channel in that step; steps of all groups are merged by that score. ``max_group_prune`` caps how
much of any group may go, so no layer collapses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prunecli.core.checks import require_fraction
from prunecli.graph.groups import removable_steps
from prunecli.graph.plans import pooled_scores
from prunecli.plan.allocators._registry import ALLOCATORS, Allocation


@dataclass(frozen=True)
class Global(Allocation):
    """``--allocation global``: channels ranked across groups; ``max_group_prune``: the most of any group that may
    go (so no layer collapses)."""

    max_group_prune: float = 0.9

    def __post_init__(self) -> None:
        require_fraction("--max-group-prune", self.max_group_prune)


@ALLOCATORS.register("global", config=Global)
def global_(groups, scores, allocation: Global, metric: str = "flops", evidence=None) -> list[str]:
    events = []
    for index, group in enumerate(groups):
        values = pooled_scores(scores[group.root], group.channel_groups, group.block)
        normalised = np.sort(values / (values.mean() + 1e-12))
        floor = math.ceil((1.0 - allocation.max_group_prune) * group.channels / group.step) * group.step
        for k in range(1, removable_steps(group, floor) + 1):
            events.append((float(normalised[k * group.step - 1]), index, group.root))
    events.sort()
    return [root for _, _, root in events]
