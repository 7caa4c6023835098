"""The plan: which channels each group keeps. Pure data, JSON round-trip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        return Plan(
            groups=tuple(GroupPlan(g["root"], int(g["channels"]), tuple(int(i) for i in g["keep"])) for g in data["groups"]),
            criterion=data.get("criterion", ""),
            allocation=data.get("allocation", ""),
        )


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
