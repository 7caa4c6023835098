"""Validation helpers shared by every config: one message shape for bad numbers."""

from __future__ import annotations

import math


def require_finite(name: str, value: float, low: float | None = None, *, strict: bool = True) -> None:
    """Raise ValueError unless ``value`` is a finite number above ``low`` (or at least it, when not strict)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} {value} must be a finite number")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} {value:g} must be {'>' if strict else '>='} {low:g}")


def require_fraction(name: str, value: float) -> None:
    """Raise ValueError unless ``value`` is a fraction in (0, 1]."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{name} {value} must be in (0, 1]")
