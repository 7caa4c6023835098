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


def pooled_scores(scores: np.ndarray, channel_groups: int = 1, block: int = 1) -> np.ndarray:
    """One score per channel, pooled where channels go together: with channel groups (grouped convs, attention
    heads) each position gets its mean across the groups; with blocks (whole heads) each channel gets its block's
    mean. The result is aligned with the channels."""
    values = np.asarray(scores, dtype=np.float64)
    if channel_groups > 1:
        values = np.tile(values.reshape(channel_groups, -1).mean(axis=0), channel_groups)
    if block > 1:
        values = np.repeat(values.reshape(-1, block).mean(axis=1), block)
    return values


def select_keep(scores: np.ndarray, keep: int, channel_groups: int = 1, block: int = 1) -> tuple[int, ...]:
    """The ``keep`` highest-scoring channels. With channel groups (grouped convs, attention heads) every group
    keeps the same positions, chosen by the mean score across groups, so the grouped conv stays valid; with
    blocks (``--prune-heads``) whole blocks are kept, chosen by their mean score."""
    channels = len(scores)
    if keep >= channels:
        return tuple(range(channels))
    values = np.asarray(scores, dtype=np.float64)
    if block > 1:
        block_scores = values.reshape(-1, block).mean(axis=1)
        blocks = np.sort(np.argsort(-block_scores, kind="stable")[:keep // block])
        return tuple(int(b * block + i) for b in blocks for i in range(block))
    if channel_groups > 1:
        size = channels // channel_groups
        per_group = keep // channel_groups
        position_scores = values.reshape(channel_groups, size).mean(axis=0)
        positions = np.sort(np.argsort(-position_scores, kind="stable")[:per_group])
        return tuple(int(p + size * g) for g in range(channel_groups) for p in positions)
    return tuple(int(i) for i in np.sort(np.argsort(-values, kind="stable")[:keep]))


def first_kept(channels: int, keep: int, channel_groups: int = 1, block: int = 1) -> tuple[int, ...]:
    """A valid choice of ``keep`` channels that keeps the first positions (of every channel group) or the first
    blocks: where only the pruned model's shapes matter (costs, latency, the reachable range)."""
    return select_keep(np.arange(channels, 0, -1, dtype=np.float64), keep, channel_groups, block)


def shape_removal(groups, counts: dict) -> dict[str, list[int]]:
    """{root: channels to remove} so that each group keeps ``counts[root]`` (:func:`first_kept`)."""
    removal = {}
    for g in groups:
        k = counts.get(g.root, g.channels)
        if k < g.channels:
            kept = set(first_kept(g.channels, k, g.channel_groups, g.block))
            removal[g.root] = [i for i in range(g.channels) if i not in kept]
    return removal
