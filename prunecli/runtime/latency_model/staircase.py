"""The runtime's channel blocks: a probe sweeps channel counts one by one and finds the block and what an
off-block count costs extra."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prunecli.runtime.latency_model._onnx import _conv_bytes
from prunecli.runtime.latency_model.measure import time_bytes
from prunecli.runtime.timing import RuntimeConfig

PROBE_KINDS = ("conv_in", "conv_out", "depthwise")


@dataclass
class Staircase:
    """The runtime's channel block per kind of layer side, and what an off-block count costs extra (0.15: 15%)."""

    blocks: dict  # kind -> block (1: no staircase found)
    penalties: dict  # kind -> relative extra latency of an off-block count
    probe: dict = field(default_factory=dict)  # kind -> {count: ms}, the raw sweep

    @property
    def block(self) -> int:
        """The channel multiple at which every measured kind is on its block (the lcm of the kinds' blocks)."""
        out = 1
        for b in self.blocks.values():
            out = out * b // math.gcd(out, b)
        return out

    def to_json(self) -> dict:
        return {"block": self.block, "blocks": self.blocks, "penalties": self.penalties,
                "probe": {k: {str(c): v for c, v in sweep.items()} for k, sweep in self.probe.items()}}


# --- one-layer ONNX models ---------------------------------------------------------------------------------


PROBE_RANGE = range(33, 65)  # channel counts swept one by one (every block size up to 16 has two multiples)


def probe_staircase(runtime: RuntimeConfig, counts=PROBE_RANGE) -> Staircase:
    """Sweep channel counts one by one on three small layers (3x3 conv input side, output side, depthwise),
    three passes taking the lower median, and find each one's block: the smallest B in 2, 4, 8, 16 such that
    at three quarters of B's multiples, one channel fewer is at least 5% slower."""
    def build(kind, c):
        if kind == "conv_in":
            return _conv_bytes(1, c, 64, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), (1, c, 28, 28)
        if kind == "conv_out":
            return _conv_bytes(1, 64, c, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), 1, True), (1, 64, 28, 28)
        return _conv_bytes(1, c, c, (28, 28), (3, 3), (1, 1), (1, 1), (1, 1), c, True), (1, c, 28, 28)

    probe, blocks, penalties = {}, {}, {}
    for kind in PROBE_KINDS:
        sweep = {c: float("inf") for c in counts}
        for _ in range(3):
            for c in counts:
                data, shape = build(kind, c)
                sweep[c] = min(sweep[c], time_bytes(data, shape, runtime, target_ms=15, min_runs=10, repeats=1))
        probe[kind] = sweep
        blocks[kind], penalties[kind] = find_block(sweep)
    return Staircase(blocks, penalties, probe)


def find_block(sweep: dict, threshold: float = 0.05, share: float = 0.75) -> tuple[int, float]:
    """(block, penalty) of one sweep {count: ms}: see :func:`probe_staircase`. The penalty is the median
    relative extra latency of off-block counts over the next multiple of the block."""
    import statistics

    for block in (2, 4, 8, 16):
        multiples = [c for c in sweep if c % block == 0 and c - 1 in sweep]
        if len(multiples) < 2:
            continue
        faster = sum(sweep[c - 1] > sweep[c] * (1 + threshold) for c in multiples)
        if faster >= share * len(multiples):
            extra = [sweep[c] / sweep[up] - 1 for c in sweep
                     if c % block and (up := (c // block + 1) * block) in sweep]
            return block, max(0.0, statistics.median(extra)) if extra else 0.0
    return 1, 0.0


# --- the model -------------------------------------------------------------------------------------------
