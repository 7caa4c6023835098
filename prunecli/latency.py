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


def check_provider(config: RuntimeConfig) -> str:
    """The onnxruntime provider name, or RuntimeFailure naming what is available."""
    import onnxruntime as ort

    wanted = PROVIDERS[config.provider]
    if wanted not in ort.get_available_providers():
        raise RuntimeFailure(
            f"--provider {config.provider}: {wanted} is not available in this onnxruntime "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --provider cpu"
        )
    return wanted


def session_options(config: RuntimeConfig):
    """The session settings every measurement uses (threads, full graph optimisation, quiet logs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads or physical_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # no spin-waiting between runs: timed interleaved, one session's spinning threads would steal the cores of the
    # other (measured: a 1.7 ms model timed at 3.0 ms next to another session on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(label: str, path: Path | bytes, config: RuntimeConfig, input_shape: tuple | None) -> Timed:
    """A warmed-up session for one model (a file, or serialised ONNX bytes), ready to time."""
    import numpy as np
    import onnxruntime as ort

    wanted = check_provider(config)
    options = session_options(config)
    providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
    before = _rss_mb()
    source = path if isinstance(path, bytes) else str(path)
    path = Path("<memory>") if isinstance(path, bytes) else Path(path)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
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


def runtime_facts(config: RuntimeConfig) -> dict:
    """What a latency depends on besides the model: recorded with every measurement, and the key of the table cache."""
    import onnxruntime as ort

    return {"provider": PROVIDERS[config.provider], "threads": config.threads or physical_cores(),
            "cpu": cpu_model(), "machine": platform.machine(), "onnxruntime": ort.__version__}


@dataclass(frozen=True)
class Ratio:
    """model / baseline latency for one statistic, with a 95% bootstrap interval over interleaved block pairs."""

    stat: str
    ratio: float
    low: float
    high: float
    model_ms: float
    baseline_ms: float
    runs: int

    @property
    def halfwidth(self) -> float:
        """Half the interval's width, relative to the ratio."""
        return (self.high - self.low) / 2 / self.ratio if self.ratio else float("inf")

    def to_json(self) -> dict:
        return {"stat": self.stat, "ratio": self.ratio, "ci95": [self.low, self.high], "model_ms": self.model_ms,
                "baseline_ms": self.baseline_ms, "runs": self.runs}


def _stat(values, stat: str) -> float:
    import numpy as np

    return float(np.percentile(values, int(stat[1:]))) if stat.startswith("p") else float(np.mean(values))


def ratio_of(model: Timed, baseline: Timed, stat: str, block: int, seed: int = 0) -> Ratio:
    """The ratio of ``stat`` over all runs so far, and its interval from resampling block pairs (each pair ran
    back to back, so machine noise is shared within a pair)."""
    import numpy as np

    pairs = min(len(model.samples_ms), len(baseline.samples_ms)) // block
    m = np.asarray(model.samples_ms[:pairs * block]).reshape(pairs, block)
    b = np.asarray(baseline.samples_ms[:pairs * block]).reshape(pairs, block)
    ratio = _stat(m.ravel(), stat) / _stat(b.ravel(), stat)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(300):
        pick = rng.integers(0, pairs, pairs)
        draws.append(_stat(m[pick].ravel(), stat) / _stat(b[pick].ravel(), stat))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Ratio(stat, ratio, float(low), float(high), _stat(m.ravel(), stat), _stat(b.ravel(), stat), pairs * block)


def measure_ratio(model: Timed, baseline: Timed, stat: str = "p50", *, halfwidth: float = 0.02, block: int = 10,
                  min_runs: int = 60, max_runs: int = 4000, max_seconds: float = 60.0) -> Ratio:
    """Time ``model`` and ``baseline`` interleaved until the ratio's 95% interval is within +-``halfwidth`` of it
    (or ``max_runs`` / ``max_seconds`` runs out; the interval then says how sure it is)."""
    deadline = time.perf_counter() + max_seconds
    while True:
        target = min(len(model.samples_ms), len(baseline.samples_ms)) + block
        measure([model, baseline], target, block)
        runs = min(len(model.samples_ms), len(baseline.samples_ms))
        if runs >= min_runs:
            estimate = ratio_of(model, baseline, stat, block)
            if estimate.halfwidth <= halfwidth or runs >= max_runs or time.perf_counter() > deadline:
                return estimate
