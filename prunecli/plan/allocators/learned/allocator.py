"""Learned allocation: the config and the allocator that orders removals by the searched keep ratios.

The search itself (DSA, on the task loss under the budget) is :mod:`prunecli.plan.allocators.learned.search`;
:func:`prunecli.plan.stage.plan_model` runs it and hands its result here as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunecli.graph.groups import removable_steps
from prunecli.plan.allocators._registry import ALLOCATORS, Allocation

# epochs of the learned allocation search (chosen on validation loss on the digits benchmark; see
# benchmarks/results/quality.md)
DEFAULT_SEARCH_EPOCHS = 2


@dataclass(frozen=True)
class Learned(Allocation):
    """``--allocation learned``: keep ratios learned from the task loss under the budget (the DSA search in
    :mod:`prunecli.plan.allocators.learned.search`); ``epochs``: its length (``--search-epochs``)."""

    epochs: int = DEFAULT_SEARCH_EPOCHS
    lr: float = 0.01  # weights (SGD, momentum 0.9)
    alpha_lr: float = 0.1  # theta (momentum, one RMS scale shared by all groups)
    estimator: str = "fd"  # dL/dalpha: "fd" central differences of the loss, "ste" DSA's straight-through masks
    fd_delta: float = 0.05  # half-width of the differences, in keep ratio (at least one channel)
    fd_groups: int = 32  # groups measured per step (in rotation when a model has more)
    alpha_init: float = 0.99
    beta2_start: float = 50.0
    beta2_end: float = 500.0
    target_fraction: float = 0.5  # of the search steps over which the target falls to the budget
    held_out: float = 0.1
    seed: int = 0  # the plan config sets it to --seed
    # "searched": keep the search's trained weights and its channel ranking; "dense": apply the learned counts to
    # the input's weights with --criterion (a control in benchmarks/quality.py that judges the allocation alone)
    weights: str = "searched"

    def __post_init__(self) -> None:
        if self.weights not in ("searched", "dense"):
            raise ValueError(f"learned weights {self.weights!r} must be 'searched' or 'dense'")
        if self.epochs < 1:
            raise ValueError(f"--search-epochs {self.epochs} must be >= 1 for --allocation learned")
        if not 0 < self.alpha_init < 1:
            raise ValueError(f"alpha_init {self.alpha_init} must be in (0, 1)")
        if self.estimator not in ("fd", "ste"):
            raise ValueError(f"estimator {self.estimator!r} must be 'fd' or 'ste'")
        if not 0 < self.held_out < 0.5:
            raise ValueError(f"held_out {self.held_out} must be in (0, 0.5)")


@ALLOCATORS.register("learned", config=Learned, needs="search")
def learned(groups, scores, allocation: Learned, metric: str = "flops", evidence=None) -> list[str]:
    """Steps ordered so that applying t of them removes, in every group, about the same share of what its
    learned ratio removes: the budget fit then lands on the learned counts scaled to the exact budget."""
    result = (evidence or {}).get("search")
    if result is None:
        raise ValueError("the learned allocator needs a search result (plan_model runs it when --data is given)")
    events = []
    for index, group in enumerate(groups):
        remove = max(1.0 - result.alpha.get(group.root, 1.0), 1e-3)
        for k in range(1, removable_steps(group) + 1):
            events.append(((k * group.step / group.channels) / remove, index, group.root))
    events.sort()
    return [root for *_, root in events]
