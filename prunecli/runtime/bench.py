"""`prunecli bench`: budget gates on measured latency, and their reports (JSON, JUnit, GitHub summary).

The measurement itself (sessions, interleaved timing, statistics) lives in :mod:`prunecli.runtime.timing`. With a
baseline, ratios are model / baseline per statistic.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from prunecli.core.checks import require_finite
from prunecli.core.errors import UsageError
from prunecli.runtime.ratio import RATIO_STATS, as_blocks, ratio_of, stat_ms
from prunecli.runtime.timing import (
    STATS,
    RuntimeConfig,
    cpu_model,
    physical_cores,
    runtime_for,
    statistics,
)

GATE_STATS = RATIO_STATS
# a ratio measured with more noise than this (prunecli.runtime.ratio.Ratio.noise) is reported as measured on a
# noisy machine (the window `prune --latency` lands in, below its target)
NOISE_WINDOW = 0.05
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    provider: str = "cpu"
    threads: int | None = None  # None: physical cores
    batch: int | None = None  # None: the input shape's batch
    warmup: int = 10
    runs: int = 100
    seconds: float | None = None
    block: int = 10  # runs per block when interleaving with a baseline
    stat: str = "p50"
    max_latency_ms: float | None = None
    max_latency_ratio: float | None = None

    def __post_init__(self) -> None:
        self.runtime  # noqa: B018 - validates provider, threads, batch, warm-up
        if self.stat not in GATE_STATS:
            raise ValueError(f"--stat {self.stat!r} is not one of {', '.join(GATE_STATS)}")
        for name in ("runs", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)} must be >= 1")
        if self.seconds is not None:
            require_finite("--seconds", self.seconds, 0)
        if self.max_latency_ms is not None:
            require_finite("--max-latency-ms", self.max_latency_ms, 0)
        if self.max_latency_ratio is not None:
            require_finite("--max-latency-ratio", self.max_latency_ratio, 0)

    @property
    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig(provider=self.provider, threads=self.threads, batch=self.batch, warmup=self.warmup)


def judge(result: dict, config: BenchConfig) -> list[dict]:
    """One entry per constraint: its name, budget, measured value and whether it holds."""
    key = f"{config.stat}_ms"
    constraints = []
    if config.max_latency_ms is not None:
        measured = result["model"][key]
        constraints.append({"name": f"{config.stat} latency <= {config.max_latency_ms:g} ms", "kind": "max_latency_ms",
                            "stat": config.stat, "budget": config.max_latency_ms, "measured": measured,
                            "passed": measured <= config.max_latency_ms})
    if config.max_latency_ratio is not None:
        measured = result["ratio"][config.stat]
        decision = result.get("ratio_decision") or {}
        constraints.append({"name": f"{config.stat} latency ratio <= {config.max_latency_ratio:g}",
                            "kind": "max_latency_ratio", "stat": config.stat, "budget": config.max_latency_ratio,
                            "measured": measured, "passed": measured <= config.max_latency_ratio,
                            "ci95": decision.get("ci95"), "spread": decision.get("spread"),
                            "disagreement": decision.get("disagreement"), "noise": decision.get("noise"),
                            "noisy": (decision.get("noise") or 0.0) > NOISE_WINDOW})
    return constraints


def run_bench(model_path: Path, baseline_path: Path | None, config: BenchConfig, input_shape: tuple | None) -> dict:
    """Measure the model (and baseline), judge the gates, return the JSON document."""
    import onnxruntime as ort

    if config.max_latency_ratio is not None and baseline_path is None:
        raise UsageError("--max-latency-ratio needs --baseline MODEL to compare against")
    runtime = runtime_for(config.runtime)
    models = [runtime.open("model", model_path, config.runtime, input_shape)]
    try:
        if baseline_path is not None:
            models.append(runtime.open("baseline", baseline_path, config.runtime, input_shape))
        started = time.perf_counter()
        runtime.measure(models, config.runs, config.block, config.seconds)
        wall = time.perf_counter() - started
        peak = runtime.peak_rss_mb()
    finally:
        runtime.drop(*models)
    doc: dict = {
        "schema_version": SCHEMA_VERSION,
        "versions": _versions(ort),
        "provider": models[0].provider,
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "threads": config.threads or physical_cores(),
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "warmup": config.warmup,
        "runs": len(models[0].samples_ms),
        "interleaved_block": config.block if baseline_path is not None else None,
        "wall_s": wall,
        "peak_rss_mb": peak,  # of the measuring process (onnxruntime only)
    }
    for timed in models:
        stats = statistics(timed.samples_ms, timed.batch)
        blocks = as_blocks(timed.samples_ms, config.block)
        doc[timed.label] = {
            "path": str(timed.path),
            "input_shape": list(timed.input_shape),
            "batch": timed.batch,
            **stats,
            **{f"{s}_ms": stat_ms(blocks, s) for s in RATIO_STATS if f"{s}_ms" not in stats},
            "rss_delta_mb": timed.rss_delta_mb,
            "samples_ms": timed.samples_ms,
        }
    if baseline_path is not None:
        doc["ratio"] = {s: doc["model"][f"{s}_ms"] / doc["baseline"][f"{s}_ms"]
                        for s in dict.fromkeys((*STATS, *RATIO_STATS)) if doc["baseline"].get(f"{s}_ms")}
        if len(models[0].samples_ms) >= 2 * config.block:
            # the gate's statistic with its 95% interval and how much it moved while measured (as `prune` decides)
            doc["ratio_decision"] = ratio_of(models[0], models[1], config.stat, config.block).to_json()
    doc["stat"] = config.stat
    doc["constraints"] = judge(doc, config)
    doc["passed"] = all(c["passed"] for c in doc["constraints"])
    return doc


def _versions(ort) -> dict:
    import numpy

    from prunecli.core.version import __version__

    return {"prunecli": __version__, "onnxruntime": ort.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def junit_xml(doc: dict) -> str:
    """One testcase per constraint; a failure element when it is missed."""
    from xml.etree import ElementTree as ET

    suite = ET.Element("testsuite", name="prunecli.bench", tests=str(len(doc["constraints"])),
                       failures=str(sum(not c["passed"] for c in doc["constraints"])))
    for c in doc["constraints"]:
        case = ET.SubElement(suite, "testcase", classname="prunecli.bench", name=c["name"])
        message = f"measured {c['measured']:.4g} vs budget {c['budget']:g} ({c['stat']})"
        if not c["passed"]:
            ET.SubElement(case, "failure", message=message).text = message
        else:
            ET.SubElement(case, "system-out").text = message
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True)


def markdown_summary(doc: dict) -> str:
    lines = [
        f"### prunecli bench ({doc['provider']}, {doc['threads']} threads, {doc['runs']} runs)",
        "",
        "| model | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in ("model", "baseline"):
        if label in doc:
            m = doc[label]
            lines.append(f"| {label} `{Path(m['path']).name}` | {m['p50_ms']:.3f} | {m['p90_ms']:.3f} | "
                         f"{m['p99_ms']:.3f} | {m['mean_ms']:.3f} |")
    if "ratio" in doc:
        r = doc["ratio"]
        lines.append(f"| ratio | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | {r['mean']:.3f} |")
    if doc["constraints"]:
        lines += ["", "| constraint | measured | result |", "|---|---:|---|"]
        lines += [f"| {c['name']} | {c['measured']:.4g} | {'pass' if c['passed'] else 'FAIL'} |" for c in doc["constraints"]]
    return "\n".join(lines) + "\n"
