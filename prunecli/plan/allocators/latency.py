"""Latency allocation: remove first the channel steps that lose the least importance per millisecond saved.

HALP's latency-saliency knapsack (Shen et al., 2022), greedy: at every step, each group's next step (its
lowest-scoring remaining channels) costs its importance - the channels' scores normalised by the group's mean,
summed and weighted by the share of the model's FLOPs and params one channel of the group carries (their mean: a
residual stream's channel feeds many layers, and mean-normalised scores alone would make it as cheap as one conv's
channel; with the FLOPs share alone, resnet18 at a latency of 0.3 kept 2.7% of its params) - and saves the latency the measured latency model (:mod:`prunecli.runtime.latency_model`) predicts for it at
the current counts (a step's saving depends on its neighbours' counts, so savings are re-predicted as the
counts move). The step with the least importance per millisecond goes next. Steps that save nothing come last.
``max_group_prune`` caps how much of any group may go, as for ``global``.
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
class Latency(Allocation):
    """``--allocation latency`` (the default with ``--latency``): least importance lost per measured millisecond
    saved; ``max_group_prune`` as for :class:`~prunecli.plan.allocators.Global`."""

    max_group_prune: float = 0.9

    def __post_init__(self) -> None:
        require_fraction("--max-group-prune", self.max_group_prune)


@ALLOCATORS.register("latency", config=Latency, needs="latency")
def latency(groups, scores, allocation: Latency, metric: str = "flops", evidence=None) -> list[str]:
    model = evidence["latency_model"]
    counts = {g.root: g.channels for g in groups}
    importance, left = {}, {}
    for group in groups:
        values = pooled_scores(scores[group.root], group.channel_groups, group.block)
        weight = (group.flops_share + group.params_share) / 2 / group.channels
        normalised = np.sort(values / (values.mean() + 1e-12)) * weight
        importance[group.root] = [float(normalised[k * group.step:(k + 1) * group.step].sum())
                                  for k in range(group.channels // group.step)]
        floor = math.ceil((1.0 - allocation.max_group_prune) * group.channels / group.step) * group.step
        left[group.root] = removable_steps(group, floor)
    by_root = {g.root: g for g in groups}
    shares = {}  # groups whose savings move when a group's count moves (they share a layer)
    for root in by_root:
        layers = set(model.layers_of_group(root))
        shares[root] = [r for r in by_root if r == root or layers & set(model.layers_of_group(r))]

    def priority(root: str) -> tuple:
        done = (by_root[root].channels - counts[root]) // by_root[root].step
        cost = importance[root][done]
        saved = model.saving(counts, root, by_root[root].step)
        return (0, cost / saved) if saved > 1e-9 else (1, cost)

    current = {r: priority(r) for r in by_root if left[r] > 0}
    order = []
    while current:
        root = min(current, key=lambda r: current[r])
        order.append(root)
        counts[root] -= by_root[root].step
        left[root] -= 1
        if left[root] == 0:
            del current[root]
        for other in shares[root]:
            if other in current:
                current[other] = priority(other)
    return order
