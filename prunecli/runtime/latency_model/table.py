"""Measured layer latencies for one runtime, cached on disk (one file per provider, threads, CPU and
onnxruntime version; an entry per layer signature and channel counts)."""

from __future__ import annotations

import hashlib
import json
import time

from prunecli.core.cache import cache_dir, read_json, write_json
from prunecli.runtime.latency_model._onnx import _relu_bytes, layer_bytes
from prunecli.runtime.latency_model.layers import Layer
from prunecli.runtime.latency_model.measure import time_bytes, time_many
from prunecli.runtime.latency_model.staircase import Staircase, probe_staircase
from prunecli.runtime.timing import RuntimeConfig, runtime_facts

CACHE_VERSION = 2  # 2: timed in the measuring process (one shared spinning pool)


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
