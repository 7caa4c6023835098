"""The latency model: how a model's latency on the deployment runtime changes with each group's kept channels.

Measured, not modelled from FLOPs:

- **Layer tables.** Every Conv2d and Linear layer is rebuilt as a one-node ONNX model at its real input
  shape and timed with onnxruntime at the channel counts the fit may choose: along its output channels (at
  its dense input channels) and along its input channels (at its dense output channels); a depthwise conv
  along its one channel count. A layer then costs ``dense * u(cin) * v(cout)``, with ``u`` and ``v`` the two
  measured curves (linear between measured points).
- **The staircase.** Runtimes block channels (onnxruntime's x86 kernels work in blocks of 4, 8 or 16 channels
  depending on the CPU), so a count that is not a multiple of the block costs about as much as the next
  multiple, or more. A probe sweeps channel counts one by one on a small conv and a depthwise conv, finds the
  block (:attr:`Staircase.block`) and what an off-block count costs extra; the tables are measured at
  multiples of the block, and off-block counts pay the measured penalty.
- **Calibration.** Layers timed alone are not the whole model (fusions, layout changes, element-wise ops), so
  the prediction is ``overhead + k * sum(layers)``, with the per-call overhead measured on a trivial model and
  ``k`` set so that the dense prediction equals the dense model's measured latency. (A second whole-model point
  at half the channels was tried: on the 64-channel test nets it moved the error from -7..+17% to -20%.)

Measurements are cached on disk (``$XDG_CACHE_HOME/prunecli/latency/``) in one file per runtime: provider,
threads, CPU model and onnxruntime version; a layer's entry is keyed by its signature (op, shapes, kernel,
stride, groups, batch). A second prune of a similar model measures only the layers it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field

from .cache import cache_dir, read_json, write_json
from .latency import RuntimeConfig, runtime_facts

GRID_POINTS = 12  # measured channel counts per swept side of a layer (the dense count included)
PROBE_KINDS = ("conv_in", "conv_out", "depthwise")
CACHE_VERSION = 2  # 2: timed in the measuring process (one shared spinning pool)


@dataclass(frozen=True)
class Side:
    """A layer's channel count on one side as a function of the groups' kept counts:
    ``fixed + sum(coeff * kept[root])`` (a concatenation's consumer has several terms, a linear layer after a
    flatten a coefficient of the spatial size)."""

    dense: int
    fixed: float = 0.0
    terms: tuple = ()  # ((root, coeff), ...)

    def at(self, counts: dict) -> int:
        if not self.terms:
            return self.dense
        return int(round(self.fixed + sum(c * counts[r] for r, c in self.terms)))

    @property
    def direct(self) -> bool:
        """The count is one group's count itself (the staircase applies to it as measured)."""
        return len(self.terms) == 1 and self.fixed == 0 and self.terms[0][1] == 1


@dataclass(frozen=True)
class Layer:
    name: str
    op: str  # "conv" | "linear"
    shape: tuple  # input shape at the runtime batch, channel dim as measured dense
    cin: Side
    cout: Side
    kernel: tuple = ()
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    groups: int = 1
    depthwise: bool = False
    bias: bool = True

    def signature(self) -> str:
        """Everything the latency of this layer depends on except its channel counts."""
        lead = list(self.shape)
        lead[1 if self.op == "conv" else -1] = None
        return json.dumps([self.op, lead, self.kernel, self.stride, self.padding, self.dilation,
                           "dw" if self.depthwise else self.groups, self.bias])


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

def _conv_bytes(n: int, cin: int, cout: int, hw: tuple, kernel, stride, padding, dilation, groups: int,
                bias: bool, opset: int = 18) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cin, *hw])
    inits = [numpy_helper.from_array(rng.standard_normal((cout, cin // groups, *kernel)).astype(np.float32) * 0.05, "w")]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], kernel_shape=list(kernel),
                            strides=list(stride), pads=list(padding) * 2, dilations=list(dilation), group=groups)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([node], "layer", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def _linear_bytes(shape: tuple, cin: int, cout: int, bias: bool, opset: int = 18) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*shape[:-1], cin])
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout)).astype(np.float32) * 0.05, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if bias else "y"])]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "layer", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def _relu_bytes(shape: tuple) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "overhead", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def layer_bytes(layer: Layer, cin: int, cout: int) -> bytes:
    if layer.op == "linear":
        return _linear_bytes(layer.shape, cin, cout, layer.bias)
    groups = cin if layer.depthwise else layer.groups
    return _conv_bytes(layer.shape[0], cin, cout, tuple(layer.shape[2:]), layer.kernel, layer.stride, layer.padding,
                       layer.dilation, groups, layer.bias)


def time_bytes(onnx_bytes: bytes, shape: tuple, runtime: RuntimeConfig, *, target_ms: float = 40.0,
               min_runs: int = 15, max_runs: int = 300, repeats: int = 2) -> float:
    """Median latency (ms) of one model; the lower of ``repeats`` medians, each over about ``target_ms`` of runs."""
    return time_many([(onnx_bytes, shape)], runtime, target_ms=target_ms, min_runs=min_runs, max_runs=max_runs,
                     passes=repeats)[0]


def time_many(models: list, runtime: RuntimeConfig, *, target_ms: float = 30.0, min_runs: int = 15,
              max_runs: int = 300, passes: int = 3) -> list[float]:
    """Median latency (ms) of each (onnx bytes, input shape), the lowest over ``passes`` passes that visit every
    model in turn (so a slow spell of the machine lands on one pass of every model, not on all passes of one)."""
    from .latency import runtime_for

    config = RuntimeConfig(runtime.provider, runtime.threads, None, warmup=3)
    measuring = runtime_for(config)
    timed = [measuring.open("layer", data, config, tuple(shape)) for data, shape in models]
    try:
        runs = []
        for t in timed:
            measuring.measure([t], 3)
            runs.append(int(min(max_runs, max(min_runs, target_ms / max(sorted(t.samples_ms)[1], 1e-3)))))
        best = [float("inf")] * len(timed)
        for _ in range(passes):
            for i, t in enumerate(timed):
                measuring.clear(t)
                measuring.measure([t], runs[i])
                best[i] = min(best[i], sorted(t.samples_ms)[len(t.samples_ms) // 2])
    finally:
        measuring.drop(*timed)
    return best


# --- the cache ---------------------------------------------------------------------------------------------

class Table:
    """Measured layer latencies for one runtime, on disk. ``measured`` counts new measurements, ``reused`` hits."""

    def __init__(self, runtime: RuntimeConfig) -> None:
        self.runtime = runtime
        self.facts = runtime_facts(runtime)
        key = hashlib.sha256(json.dumps([CACHE_VERSION, self.facts], sort_keys=True).encode()).hexdigest()[:16]
        self.path = cache_dir() / "latency" / f"{key}.json"
        doc = read_json(self.path) or {}
        self.entries: dict = doc.get("entries", {}) if doc.get("facts") == self.facts else {}
        self.staircase_doc: dict | None = doc.get("staircase") if doc.get("facts") == self.facts else None
        self.measured = 0
        self.reused = 0
        self.wall_s = 0.0

    def time(self, key: str, build, shape: tuple) -> float:
        if key in self.entries:
            self.reused += 1
            return self.entries[key]
        t0 = time.perf_counter()
        value = time_bytes(build(), shape, self.runtime)
        self.wall_s += time.perf_counter() - t0
        self.entries[key] = value
        self.measured += 1
        return value

    def fill(self, points: list, chunk: int = 16) -> None:
        """Measure every (key, build, shape) not yet in the table, ``chunk`` sessions at a time (see time_many)."""
        missing, seen = [], set()
        for key, build, shape in points:
            if key in self.entries or key in seen:
                self.reused += key in self.entries
                continue
            seen.add(key)
            missing.append((key, build, shape))
        t0 = time.perf_counter()
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            values = time_many([(build(), shape) for _, build, shape in part], self.runtime)
            for (key, _, _), value in zip(part, values):
                self.entries[key] = value
        self.measured += len(missing)
        self.wall_s += time.perf_counter() - t0

    def layer_point(self, layer: "Layer", cin: int, cout: int) -> tuple:
        shape = list(layer.shape)
        shape[1 if layer.op == "conv" else -1] = cin
        return f"{layer.signature()}|{cin}|{cout}", (lambda: layer_bytes(layer, cin, cout)), tuple(shape)

    def save(self) -> None:
        write_json(self.path, {"facts": self.facts, "staircase": self.staircase_doc, "entries": self.entries})

    def layer_ms(self, layer: Layer, cin: int, cout: int) -> float:
        """One layer's latency, measured now if the table lacks it."""
        return self.time(*self.layer_point(layer, cin, cout))

    def value(self, layer: Layer, cin: int, cout: int) -> float:
        """A point :meth:`fill` measured or found."""
        return self.entries[self.layer_point(layer, cin, cout)[0]]

    def overhead_ms(self, shape: tuple) -> float:
        return self.time(f"overhead|{list(shape)}", lambda: _relu_bytes(shape), tuple(shape))

    def staircase(self) -> Staircase:
        """The runtime's channel blocks, probed once per runtime and cached."""
        if self.staircase_doc is None:
            t0 = time.perf_counter()
            self.staircase_doc = probe_staircase(self.runtime).to_json()
            self.wall_s += time.perf_counter() - t0
            self.measured += 1
        else:
            self.reused += 1
        doc = self.staircase_doc
        return Staircase(dict(doc["blocks"]), dict(doc["penalties"]),
                         {k: {int(c): v for c, v in sweep.items()} for k, sweep in doc["probe"].items()})


# --- the staircase probe -----------------------------------------------------------------------------------

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

def layers_of(model, example_input, groups, batch: int) -> list[Layer]:
    """The Conv2d and Linear layers the forward pass runs, with how each side's channels follow the groups."""
    import torch

    from .graph import channel_roles

    shapes: dict = {}
    hooks = []

    def record(name):
        def hook(module, inputs, output) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    roles = channel_roles(model, example_input, groups)
    channels = {g.root: g.channels for g in groups}
    modules = dict(model.named_modules())
    layers = []
    for name, shape in shapes.items():
        module = modules[name]
        role = roles.get(name, {})
        conv = isinstance(module, torch.nn.Conv2d)
        dense_in = module.in_channels if conv else module.in_features
        dense_out = module.out_channels if conv else module.out_features
        depthwise = conv and module.groups > 1 and module.groups == dense_in == dense_out
        out_root = role.get("out")
        cout = Side(dense_out, 0.0, ((out_root, dense_out / channels[out_root]),)) if out_root else Side(dense_out)
        ins = role.get("in", {})
        if depthwise:
            cin = cout
        elif ins:
            fixed = dense_in - sum(ins.values())
            cin = Side(dense_in, float(fixed), tuple((r, n / channels[r]) for r, n in sorted(ins.items())))
        else:
            cin = Side(dense_in)
        shape = (batch, *shape[1:])  # the runtime's batch
        layers.append(Layer(
            name=name, op="conv" if conv else "linear", shape=tuple(int(s) for s in shape), cin=cin, cout=cout,
            kernel=tuple(module.kernel_size) if conv else (), stride=tuple(module.stride) if conv else (),
            padding=_padding(module, shape) if conv else (), dilation=tuple(module.dilation) if conv else (),
            groups=module.groups if conv else 1, depthwise=depthwise, bias=module.bias is not None,
        ))
    return layers


def _padding(module, shape) -> tuple:
    if isinstance(module.padding, str):  # "same" / "valid"
        if module.padding == "valid":
            return (0, 0)
        return tuple((d * (k - 1)) // 2 for k, d in zip(module.kernel_size, module.dilation))
    return tuple(module.padding)


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
