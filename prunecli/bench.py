"""onnxruntime latency: sessions, interleaved timing, statistics and budget gates.

With a baseline, both models are timed in the same process in alternating blocks of runs, so that
machine noise (frequency changes, other processes) lands on both; ratios are model / baseline per
statistic. Latency is wall time of ``session.run`` for one batch, in milliseconds.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import ONNX, RECIPE, is_bundle, read_recipe, verify_file
from .config import require_finite
from .errors import RuntimeFailure, UsageError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
STATS = ("min", "mean", "std", "p50", "p90", "p95", "p99")
GATE_STATS = ("p50", "p90", "p99", "mean")
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
        if self.provider not in PROVIDERS:
            raise ValueError(f"--provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        if self.stat not in GATE_STATS:
            raise ValueError(f"--stat {self.stat!r} is not one of {', '.join(GATE_STATS)}")
        for name in ("warmup", "runs", "block"):
            low = 0 if name == "warmup" else 1
            if getattr(self, name) < low:
                raise ValueError(f"--{name} {getattr(self, name)} must be >= {low}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads} must be >= 1")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"--batch {self.batch} must be >= 1")
        if self.seconds is not None:
            require_finite("--seconds", self.seconds, 0)
        if self.max_latency_ms is not None:
            require_finite("--max-latency-ms", self.max_latency_ms, 0)
        if self.max_latency_ratio is not None:
            require_finite("--max-latency-ratio", self.max_latency_ratio, 0)


def physical_cores() -> int:
    """Physical cores from /proc/cpuinfo (Linux), else the logical CPU count."""
    try:
        pairs = set()
        physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                physical = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                pairs.add((physical, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class Timed:
    """One model under test."""

    label: str
    path: Path
    session: object
    runner: object  # zero-argument callable running one batch
    batch: int
    input_shape: tuple
    rss_delta_mb: float = 0.0
    samples_ms: list = field(default_factory=list)

    def run_once(self) -> None:
        start = time.perf_counter_ns()
        self.runner()
        self.samples_ms.append((time.perf_counter_ns() - start) / 1e6)


def open_session(label: str, path: Path, config: BenchConfig, input_shape: tuple | None) -> Timed:
    import numpy as np
    import onnxruntime as ort

    wanted = PROVIDERS[config.provider]
    if wanted not in ort.get_available_providers():
        raise RuntimeFailure(
            f"--provider {config.provider}: {wanted} is not available in this onnxruntime "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --provider cpu"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads or physical_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
    before = _rss_mb()
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise RuntimeFailure(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    active = session.get_providers()[0]
    if active != wanted:
        raise RuntimeFailure(f"--provider {config.provider}: onnxruntime fell back to {active} for {path}; "
                             "the requested provider is not usable on this machine")
    inp = session.get_inputs()[0]
    shape = list(input_shape) if input_shape else [d if isinstance(d, int) else 1 for d in inp.shape]
    if config.batch:
        shape[0] = config.batch
    rng = np.random.default_rng(0)
    feeds = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    if wanted == "CPUExecutionProvider":
        runner = lambda: session.run(None, feeds)  # noqa: E731
    else:
        binding = _gpu_binding(session, feeds)
        runner = lambda: session.run_with_iobinding(binding)  # noqa: E731
    timed = Timed(label, Path(path), session, runner, int(shape[0]), tuple(shape))
    try:
        for _ in range(config.warmup):
            runner()
    except Exception as exc:
        raise UsageError(f"{path} rejects input {tuple(shape)} ({str(exc).splitlines()[0]}); pass --input-shape") from exc
    timed.rss_delta_mb = _rss_mb() - before
    return timed


def _gpu_binding(session, feeds):
    """IO binding for GPU providers: inputs copied to the device once, outputs left there."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")
    return binding


def measure(models: list[Timed], config: BenchConfig) -> None:
    """Time every model in alternating blocks until --runs each, or --seconds, whichever comes first."""
    deadline = time.perf_counter() + config.seconds if config.seconds else None
    while min(len(t.samples_ms) for t in models) < config.runs:
        for timed in models:
            for _ in range(min(config.block, config.runs - len(timed.samples_ms))):
                timed.run_once()
        if deadline is not None and time.perf_counter() >= deadline:
            break


def statistics(samples_ms: list[float], batch: int) -> dict:
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    stats = {
        "min_ms": float(a.min()),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
    }
    for q in (50, 90, 95, 99):
        stats[f"p{q}_ms"] = float(np.percentile(a, q))
    stats["throughput_items_per_s"] = batch / (stats["mean_ms"] / 1000.0)
    return stats


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
        constraints.append({"name": f"{config.stat} latency ratio <= {config.max_latency_ratio:g}",
                            "kind": "max_latency_ratio", "stat": config.stat, "budget": config.max_latency_ratio,
                            "measured": measured, "passed": measured <= config.max_latency_ratio})
    return constraints


def run_bench(model_path: Path, baseline_path: Path | None, config: BenchConfig, input_shape: tuple | None) -> dict:
    """Measure the model (and baseline), judge the gates, return the JSON document."""
    import onnxruntime as ort

    if config.max_latency_ratio is not None and baseline_path is None:
        raise UsageError("--max-latency-ratio needs --baseline MODEL to compare against")
    models = [open_session("model", model_path, config, input_shape)]
    if baseline_path is not None:
        models.append(open_session("baseline", baseline_path, config, input_shape))
    started = time.perf_counter()
    measure(models, config)
    wall = time.perf_counter() - started
    doc: dict = {
        "schema_version": SCHEMA_VERSION,
        "versions": _versions(ort),
        "provider": models[0].session.get_providers()[0],
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "threads": config.threads or physical_cores(),
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "warmup": config.warmup,
        "runs": len(models[0].samples_ms),
        "interleaved_block": config.block if baseline_path is not None else None,
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
    }
    for timed in models:
        doc[timed.label] = {
            "path": str(timed.path),
            "input_shape": list(timed.input_shape),
            "batch": timed.batch,
            **statistics(timed.samples_ms, timed.batch),
            "rss_delta_mb": timed.rss_delta_mb,
            "samples_ms": timed.samples_ms,
        }
    if baseline_path is not None:
        doc["ratio"] = {s: doc["model"][f"{s}_ms"] / doc["baseline"][f"{s}_ms"] for s in STATS if doc["baseline"][f"{s}_ms"]}
    doc["stat"] = config.stat
    doc["constraints"] = judge(doc, config)
    doc["passed"] = all(c["passed"] for c in doc["constraints"])
    return doc


def _versions(ort) -> dict:
    import numpy

    from . import __version__

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


def resolve_onnx(spec: str, tmpdir: Path, load_kwargs: dict, flag: str = "MODEL") -> tuple[Path, tuple | None]:
    """(onnx path, input shape or None) for an .onnx file, a bundle, or any MODEL spec (exported on the fly)."""
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise UsageError(f"{flag} {path}: file not found")
        return path, None
    if path.is_dir() and (path / ONNX).is_file():
        if not is_bundle(path):
            raise UsageError(f"{flag} {path} holds {ONNX} but no {RECIPE}; pass the .onnx file itself")
        recipe = read_recipe(path)
        return verify_file(path, ONNX, recipe), tuple(recipe["input_shape"])
    from .load import load_model
    from .export import run_export

    loaded = load_model(spec, **load_kwargs)
    out = tmpdir / f"{flag.strip('-').lower()}.onnx"
    run_export(loaded, out)
    return out, loaded.input_shape
