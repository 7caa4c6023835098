"""The allocator registry and the base of their configs (machinery: import from :mod:`prunecli.plan.allocators`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from prunecli.core.registry import Registry

Allocator = Callable[..., list]
ALLOCATORS: Registry[Allocator] = Registry("allocation", "--allocation")


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Base of the allocation configs: the subclass is the allocator, its fields are the allocator's settings
    (``Global(max_group_prune=0.9)``). Registered with ``ALLOCATORS.register(name, config=Cls)``."""

    @property
    def name(self) -> str:
        return ALLOCATORS.name_of(self)

    def settings(self) -> dict | None:
        """report.json's ``allocation_settings``: the fields, or None for an allocator without settings."""
        return dataclasses.asdict(self) if dataclasses.fields(self) else None
