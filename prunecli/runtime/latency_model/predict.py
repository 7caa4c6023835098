"""The predictor: per-layer curves from the table, the staircase penalty, calibrated on the dense model's
measured latency; and its description for `inspect --latency`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunecli.runtime.latency_model.layers import Layer, Side, layers_of
from prunecli.runtime.latency_model.staircase import Staircase
from prunecli.runtime.latency_model.table import Table
from prunecli.runtime.timing import RuntimeConfig

GRID_POINTS = 12  # measured channel counts per swept side of a layer (the dense count included)


def _grid(dense: int, low: int, multiple: int, points: int = GRID_POINTS) -> list[int]:
    """About ``points`` counts from ``low`` to ``dense``, multiples of ``multiple`` (dense itself included)."""
    low = max(multiple, low)
    if dense <= low:
        return [dense]
    values = {dense}
    for i in range(points - 1):
        c = low + (dense - low) * i / (points - 1)
        values.add(max(multiple, int(round(c / multiple)) * multiple))
    return sorted(v for v in values if v <= dense)


def _interp(curve: list, c: float) -> float:
    """Piecewise linear through [(count, ms)], extended linearly through the origin below the first point."""
    xs = [p[0] for p in curve]
    if c >= xs[-1]:
        return curve[-1][1]
    if c <= xs[0]:
        return curve[0][1] * c / xs[0] if xs[0] else curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= c <= x1:
            return y0 + (y1 - y0) * (c - x0) / (x1 - x0)
    return curve[-1][1]


@dataclass
class LayerCurves:
    layer: Layer
    dense_ms: float
    cin_curve: list | None  # [(count, ms)] at dense cout
    cout_curve: list | None  # [(count, ms)] at dense cin
    dw_curve: list | None = None


class LatencyModel:
    """Predicts the whole model's latency (ms, the runtime's ``stat``) for per-group kept counts."""

    def __init__(self, curves: list[LayerCurves], staircase: Staircase, overhead_ms: float, dense_ms: float,
                 groups, table: Table) -> None:
        self.curves = curves
        self.staircase = staircase
        self.overhead_ms = overhead_ms
        self.dense_ms = dense_ms
        self.groups = list(groups)
        self.table = table
        self.dense_counts = {g.root: g.channels for g in self.groups}
        self.layers_dense_ms = sum(c.dense_ms for c in curves)
        self.scale = max(0.0, dense_ms - overhead_ms) / self.layers_dense_ms if self.layers_dense_ms else 0.0
        self.floor_ms = overhead_ms  # no prediction below one call of a trivial model
        self._by_root: dict[str, list[int]] = {}
        for i, c in enumerate(curves):
            for root in {r for r, _ in c.layer.cin.terms} | {r for r, _ in c.layer.cout.terms}:
                self._by_root.setdefault(root, []).append(i)

    def _penalty(self, kind: str, side: Side, count: int) -> float:
        block = self.staircase.blocks.get(kind, 1)
        if block > 1 and side.direct and count % block:
            return 1.0 + self.staircase.penalties.get(kind, 0.0)
        return 1.0

    def layer_ms(self, i: int, counts: dict) -> float:
        c = self.curves[i]
        layer = c.layer
        if c.dw_curve is not None:
            n = layer.cout.at(counts)
            return _interp(c.dw_curve, n) * self._penalty("depthwise", layer.cout, n)
        ms = c.dense_ms
        if c.cin_curve is not None:
            n = layer.cin.at(counts)
            kind = "conv_in" if layer.op == "conv" else "linear"
            ms *= _interp(c.cin_curve, n) / c.dense_ms * self._penalty(kind, layer.cin, n)
        if c.cout_curve is not None:
            n = layer.cout.at(counts)
            kind = "conv_out" if layer.op == "conv" else "linear"
            ms *= _interp(c.cout_curve, n) / c.dense_ms * self._penalty(kind, layer.cout, n)
        return ms

    def layers_ms(self, counts: dict) -> float:
        return sum(self.layer_ms(i, counts) for i in range(len(self.curves)))

    def predict(self, counts: dict) -> float:
        """Predicted whole-model latency (ms) with ``counts`` kept channels per group (others dense)."""
        full = {**self.dense_counts, **counts}
        return max(self.floor_ms, self.overhead_ms + self.scale * self.layers_ms(full))

    def saving(self, counts: dict, root: str, step: int) -> float:
        """Predicted latency saved (ms) by removing ``step`` more channels of ``root`` at ``counts``."""
        after = {**counts, root: counts[root] - step}
        return self.scale * sum(self.layer_ms(i, counts) - self.layer_ms(i, after) for i in self.layers_of_group(root))

    def layers_of_group(self, root: str) -> list[int]:
        """Indices of the layers whose channels follow ``root``'s count."""
        return self._by_root.get(root, [])

    def group_share(self) -> dict[str, float]:
        """Per group: the share of the predicted latency its removal to ``min_keep`` would save (alone)."""
        dense = self.predict({})
        return {g.root: (dense - self.predict({g.root: g.min_keep})) / dense if dense else 0.0 for g in self.groups}

    def curve(self, root: str) -> list[tuple[int, float]]:
        """Predicted whole-model latency against the group's kept channels (every count it may keep)."""
        g = next(g for g in self.groups if g.root == root)
        return [(k, self.predict({root: k})) for k in range(g.min_keep, g.channels + 1, g.step)]

    def to_json(self) -> dict:
        return {"dense_ms": self.dense_ms, "overhead_ms": self.overhead_ms, "scale": self.scale,

                "layers": len(self.curves), "layers_dense_ms": self.layers_dense_ms,
                "staircase": {"block": self.staircase.block, "blocks": self.staircase.blocks,
                              "penalties": self.staircase.penalties},
                "table": {"file": str(self.table.path), "measured": self.table.measured, "reused": self.table.reused,
                          "measure_s": self.table.wall_s, **self.table.facts}}


def build_latency_model(model, example_input, groups, runtime: RuntimeConfig, dense_ms: float, batch: int,
                        table: Table | None = None) -> LatencyModel:
    """Measure (or read from the cache) every layer's curves for these groups and calibrate on ``dense_ms``."""
    table = table or Table(runtime)
    staircase = table.staircase()
    block = staircase.block
    by_root = {g.root: g for g in groups}
    layers = layers_of(model, example_input, groups, batch)

    def low_of(side: Side) -> int:
        return int(math.floor(side.fixed + sum(c * by_root[r].min_keep for r, c in side.terms)))

    def multiple(side: Side, layer: Layer) -> int:
        if not side.direct:
            return 1
        step = by_root[side.terms[0][0]].step
        base = block * step // math.gcd(block, step) if step % block else step
        if layer.groups > 1 and not layer.depthwise:
            base = base * layer.groups // math.gcd(base, layer.groups)
        return base

    plans = []  # per layer: the (cin, cout) points of its curves
    for layer in layers:
        cin, cout = layer.cin.dense, layer.cout.dense
        if layer.depthwise:
            plans.append({"dw": [(c, c) for c in _grid(cout, low_of(layer.cout), multiple(layer.cout, layer))]})
            continue
        plan = {}
        if layer.cin.terms:
            plan["cin"] = [(c, cout) for c in _grid(cin, low_of(layer.cin), multiple(layer.cin, layer))]
        if layer.cout.terms:
            plan["cout"] = [(cin, c) for c in _grid(cout, low_of(layer.cout), multiple(layer.cout, layer))]
        plans.append(plan)
    try:
        points = [table.layer_point(layer, layer.cin.dense, layer.cout.dense) for layer in layers]
        points += [table.layer_point(layer, a, b) for layer, plan in zip(layers, plans)
                   for pairs in plan.values() for a, b in pairs]
        table.fill(points)
        curves = []
        for layer, plan in zip(layers, plans):
            dense = table.value(layer, layer.cin.dense, layer.cout.dense)
            curve = {side: [(a if side != "cout" else b, table.value(layer, a, b)) for a, b in pairs]
                     for side, pairs in plan.items()}
            curves.append(LayerCurves(layer, dense, curve.get("cin"), curve.get("cout"), curve.get("dw")))
        overhead = table.overhead_ms(tuple(layers[0].shape) if layers else (batch,))
    finally:
        table.save()
    return LatencyModel(curves, staircase, overhead, dense_ms, groups, table)


def describe(model: LatencyModel, heaviest: int | None = None) -> dict:
    """`prunecli inspect --latency`: the dense latency, the staircase, and per group its latency share and the
    predicted whole-model latency against its kept channels (that group alone)."""
    shares = model.group_share()
    groups = sorted(model.groups, key=lambda g: -shares[g.root])
    return {**model.to_json(),
            "groups": [{"root": g.root, "channels": g.channels, "step": g.step, "latency_share": shares[g.root],
                        "curve": [[k, ms] for k, ms in model.curve(g.root)]}
                       for g in (groups if heaviest is None else groups[:heaviest])]}
