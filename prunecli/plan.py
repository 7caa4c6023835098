"""The plan: which channels each group keeps. Pure data, JSON round-trip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class PlanFormatError(ValueError):
    """A plan read from JSON that is not a valid plan."""


@dataclass(frozen=True)
class GroupPlan:
    root: str
    channels: int
    keep: tuple[int, ...]  # kept channel indices of the root's outputs, ascending

    @property
    def removed(self) -> list[int]:
        kept = set(self.keep)
        return [i for i in range(self.channels) if i not in kept]


@dataclass(frozen=True)
class Plan:
    groups: tuple[GroupPlan, ...]
    criterion: str
    allocation: str

    def removed(self) -> dict[str, list[int]]:
        return {g.root: g.removed for g in self.groups if len(g.keep) < g.channels}

    def to_json(self) -> dict:
        return {
            "criterion": self.criterion,
            "allocation": self.allocation,
            "groups": [{"root": g.root, "channels": g.channels, "keep": list(g.keep)} for g in self.groups],
        }

    @staticmethod
    def from_json(data: dict) -> "Plan":
        """Parse and validate: every group names a layer, keeps 1..channels distinct indices in range."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            raise PlanFormatError("a plan is an object with a 'groups' list")
        groups = []
        for g in data["groups"]:
            try:
                root, channels, keep = g["root"], int(g["channels"]), tuple(sorted(int(i) for i in g["keep"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise PlanFormatError(f"group {g!r} needs root, channels and keep") from exc
            if not isinstance(root, str) or not root:
                raise PlanFormatError(f"group root {root!r} is not a layer name")
            if channels < 1 or not keep or len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= channels:
                raise PlanFormatError(f"group {root}: keep must be 1..{channels} distinct indices in [0, {channels})")
            groups.append(GroupPlan(root, channels, keep))
        return Plan(groups=tuple(groups), criterion=str(data.get("criterion", "")),
                    allocation=str(data.get("allocation", "")))


def select_keep(scores: np.ndarray, keep: int, channel_groups: int = 1) -> tuple[int, ...]:
    """The ``keep`` highest-scoring channels. With channel groups (grouped convs) every group keeps the
    same positions, chosen by the mean score across groups, so the grouped conv stays valid."""
    channels = len(scores)
    if keep >= channels:
        return tuple(range(channels))
    if channel_groups > 1:
        size = channels // channel_groups
        per_group = keep // channel_groups
        position_scores = scores.reshape(channel_groups, size).mean(axis=0)
        positions = np.sort(np.argsort(-position_scores, kind="stable")[:per_group])
        return tuple(int(p + size * g) for g in range(channel_groups) for p in positions)
    return tuple(int(i) for i in np.sort(np.argsort(-scores, kind="stable")[:keep]))
