"""Allocators decide how pruning is spread over groups.

An allocator returns a *removal order*: a list of group roots, each entry meaning "remove one more
step of channels from this group". Applying the first ``t`` entries gives a plan that prunes more as
``t`` grows; :mod:`prunecli.plan.budget` searches ``t`` (then adjusts single groups) so the plan meets the
budget exactly. Allocators are pure: they read group facts, channel scores and the evidence they
declare with ``needs`` (``"sensitivity"``: a scan, which :func:`prunecli.plan.stage.plan_model` provides),
never weights.

The config's type is the allocator: ``Uniform()``, ``Global(max_group_prune=0.9)``, ``Latency()``,
``Sensitivity(levels=..., metric="loss")``, ``Learned(epochs=2)``. Each handler is called as
``handler(groups, scores, allocation, metric, evidence)``, where ``allocation`` is its config and ``metric`` the
budget the plan is fitted on (``"flops"`` or ``"params"``).
"""

from __future__ import annotations

from prunecli.plan.allocators._registry import ALLOCATORS, Allocation, Allocator
from prunecli.plan.allocators.global_ import Global
from prunecli.plan.allocators.latency import Latency
from prunecli.plan.allocators.learned import Learned
from prunecli.plan.allocators.sensitivity import Sensitivity
from prunecli.plan.allocators.uniform import Uniform

__all__ = ["ALLOCATORS", "Allocation", "Allocator", "Global", "Latency", "Learned", "Sensitivity", "Uniform"]
