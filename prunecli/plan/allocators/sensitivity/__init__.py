"""Sensitivity allocation: the config and allocator (:mod:`.allocator`) and the per-group scan (:mod:`.scan`)."""

from __future__ import annotations

from prunecli.plan.allocators.sensitivity.allocator import (
           DEFAULT_LEVELS,
           METRICS,
           Sensitivity,
           sensitivity,
           step_slopes,
)
from prunecli.plan.allocators.sensitivity.scan import (
           Curve,
           Point,
           Scan,
           cached_scan,
           run_scan,
)

__all__ = ["DEFAULT_LEVELS", "METRICS", "Curve", "Point", "Scan", "Sensitivity", "cached_scan", "run_scan",
           "sensitivity", "step_slopes"]
