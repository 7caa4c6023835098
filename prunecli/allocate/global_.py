"""Global allocation: channels ranked across groups by normalised importance.

Scores are divided by their group's mean (Torch-Pruning's default normaliser) so that groups of
different layer types compare. A group's k-th step is removed at the score of the highest-scoring
channel in that step; steps of all groups are merged by that score. ``max_group_prune`` caps how
much of any group may go, so no layer collapses.
"""

from __future__ import annotations

import math

import numpy as np

from ..plan import pooled_scores
from . import ALLOCATORS, removable_steps


@ALLOCATORS.register("global")
def global_(groups, scores, config, evidence=None) -> list[str]:
    events = []
    for index, group in enumerate(groups):
        values = pooled_scores(scores[group.root], group.channel_groups, group.block)
        normalised = np.sort(values / (values.mean() + 1e-12))
        floor = math.ceil((1.0 - config.max_group_prune) * group.channels / group.step) * group.step
        for k in range(1, removable_steps(group, floor) + 1):
            events.append((float(normalised[k * group.step - 1]), index, group.root))
    events.sort()
    return [root for _, _, root in events]
