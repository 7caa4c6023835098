"""Allocators decide how pruning is spread over groups.

An allocator returns a *removal order*: a list of group roots, each entry meaning "remove one more
step of channels from this group". Applying the first ``t`` entries gives a plan that prunes more as
``t`` grows; :mod:`prunecli.budget` searches ``t`` (then adjusts single groups) so the plan meets the
budget exactly. Allocators are pure: they read group facts, channel scores and the evidence they
declare with ``needs`` (``"sensitivity"``: a scan, which :func:`prunecli.planner.plan_model` provides),
never weights.
"""

from __future__ import annotations

from typing import Callable

from ..registry import Registry

Allocator = Callable[..., list]
ALLOCATORS: Registry[Allocator] = Registry("allocation", "--allocation")


def removable_steps(group, floor: int | None = None) -> int:
    """How many whole steps a group can lose before reaching its floor (min_keep by default)."""
    floor = group.min_keep if floor is None else max(floor, group.min_keep)
    if group.channels % group.step or floor >= group.channels:
        return 0
    return (group.channels - floor) // group.step


from . import global_, latency, learned, sensitivity, uniform  # noqa: E402,F401  (registration side effects)
