"""Latency on the deployment runtime: onnxruntime sessions, interleaved timing and statistics.

The one home of latency measurement: `prunecli bench` gates on it, and `prune` measures with it. With several
models, they are timed in the same process in alternating blocks of runs, so that machine noise (frequency
changes, other processes) lands on all of them. Latency is the wall time of one ``session.run`` for one batch,
in milliseconds.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RuntimeFailure, UsageError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
STATS = ("min", "mean", "std", "p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a model runs: provider, intra-op threads (None: physical cores), batch (None: the input
    shape's), untimed warm-up runs."""

    provider: str = "cpu"
    threads: int | None = None
    batch: int | None = None
    warmup: int = 10

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"--provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads} must be >= 1")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"--batch {self.batch} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"--warmup {self.warmup} must be >= 0")


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


def open_session(label: str, path: Path, config: RuntimeConfig, input_shape: tuple | None) -> Timed:
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


def measure(models: list[Timed], runs: int, block: int = 10, seconds: float | None = None) -> None:
    """Time every model in alternating blocks of ``block`` runs until ``runs`` each, or ``seconds``, whichever
    comes first."""
    deadline = time.perf_counter() + seconds if seconds else None
    while min(len(t.samples_ms) for t in models) < runs:
        for timed in models:
            for _ in range(min(block, runs - len(timed.samples_ms))):
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
