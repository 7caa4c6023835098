"""What `prune` does: the plan stage's config plus the schedule (``OneShot()``, ``Agp(steps=4)``, ``Soft()``)."""

from __future__ import annotations

from dataclasses import dataclass

from prunecli.pipeline.schedules import SCHEDULES, OneShot, Schedule
from prunecli.plan.config import PlanConfig


@dataclass(frozen=True)
class PruneConfig(PlanConfig):
    """A :class:`~prunecli.plan.config.PlanConfig` and how pruning and fine-tuning interleave: the ``schedule``'s
    type is the schedule."""

    schedule: Schedule = OneShot()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.schedule, str):
            raise ValueError(f"schedule={self.schedule!r} is a name: pass its config, e.g. "
                             f"{SCHEDULES.config(self.schedule).__name__}() from prunecli.pipeline.schedules")
        SCHEDULES.name_of(self.schedule)

    @property
    def schedule_name(self) -> str:
        return SCHEDULES.name_of(self.schedule)
