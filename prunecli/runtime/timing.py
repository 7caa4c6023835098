"""Latency on the deployment runtime: onnxruntime sessions, interleaved timing and statistics.

The one home of latency measurement: `prunecli bench` gates on it, and `prune` measures with it. Models are timed
in a measuring process that holds onnxruntime and nothing else (:class:`Runtime`, :mod:`prunecli.runtime._worker`);
several models are timed there in alternating blocks of runs, so that machine noise (frequency changes, other
processes) lands on all of them. Latency is the wall time of one ``session.run`` for one batch, in milliseconds.
The ratio statistics and their intervals are :mod:`prunecli.runtime.ratio`.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from prunecli.core.errors import RuntimeFailure, UsageError
from prunecli.runtime.ratio import Ratio, as_blocks, stat_ms

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


@dataclass
class Timed:
    """One model open in a :class:`Runtime` (the measuring process), and the samples timed so far."""

    label: str
    path: Path
    id: int
    batch: int
    input_shape: tuple
    provider: str
    rss_delta_mb: float = 0.0
    samples_ms: list = field(default_factory=list)


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


class Runtime:
    """A measuring process (:mod:`prunecli.runtime._worker`): onnxruntime only, one intra-op pool of ``threads``
    spinning threads shared by its sessions, as a deployed process has. Models are opened from files or ONNX
    bytes and timed there; the samples come back here. Get one with :func:`runtime_for`."""

    def __init__(self, provider: str, threads: int) -> None:
        import subprocess
        import sys
        import tempfile

        self.provider, self.threads = provider, threads
        self.dir = Path(tempfile.mkdtemp(prefix="prunecli-runtime-"))
        self._log = open(self.dir / "stderr.log", "w+")
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "prunecli.runtime._worker", provider, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     bufsize=1, env=env)
        self._files = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, op: str, **request) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **request}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self._log.seek(0)
            last = [x for x in self._log.read().splitlines() if x.strip()]
            raise RuntimeFailure(f"the onnxruntime measuring process stopped ({last[-1] if last else 'no message'}); "
                                 "rerun with --debug, or check that onnxruntime imports in this environment")
        answer = json.loads(line)
        if not answer.pop("ok"):
            cls = UsageError if answer["kind"] == "usage" else RuntimeFailure
            raise cls(answer["message"])
        return answer

    def open(self, label: str, source: Path | bytes, config: RuntimeConfig, input_shape: tuple | None) -> Timed:
        """A warmed-up session for one model (a file, or serialised ONNX bytes), ready to time."""
        check_provider(config)
        if isinstance(source, bytes):
            self._files += 1
            path, name = self.dir / f"model{self._files}.onnx", "<memory>"
            path.write_bytes(source)
        else:
            path, name = Path(source).resolve(), str(source)  # the measuring process may have another cwd
        try:
            got = self.call("open", path=str(path), name=name, input_shape=list(input_shape) if input_shape else None,
                            batch=config.batch, warmup=config.warmup)
        finally:
            if isinstance(source, bytes):
                path.unlink()
        return Timed(label, Path(name), got["id"], got["batch"], tuple(got["input_shape"]), got["provider"],
                     got["rss_delta_mb"])

    def measure(self, models: list[Timed], runs: int, block: int = 10, seconds: float | None = None) -> None:
        """Time the models interleaved in blocks of ``block`` runs until ``runs`` more each (or ``seconds``)."""
        got = self.call("measure", ids=[m.id for m in models], runs=runs, block=block, seconds=seconds)
        for model, samples in zip(models, got["samples"]):
            model.samples_ms.extend(samples)

    def ratio(self, model: Timed, baseline: Timed, stat: str = "p50", **args) -> "Ratio":
        """:func:`measure_ratio` from fresh samples of both models (the earlier ones are discarded)."""
        got = self.call("ratio", model=model.id, baseline=baseline.id, args={"stat": stat, **args})
        model.samples_ms[:], baseline.samples_ms[:] = got["samples"]
        return Ratio.from_json(got["ratio"])

    def clear(self, model: Timed) -> None:
        self.call("clear", id=model.id)
        model.samples_ms.clear()

    def drop(self, *models: Timed) -> None:
        """Close the models' sessions in the measuring process."""
        for model in models:
            self.call("drop", id=model.id)

    def peak_rss_mb(self) -> float:
        """The measuring process's peak resident memory."""
        return self.call("rss")["peak_rss_mb"]

    def close(self) -> None:
        import shutil

        try:
            self.proc.stdin.close()  # end of input ends the measuring process
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_RUNTIMES: dict = {}


def _key(config: RuntimeConfig) -> tuple:
    return config.provider, config.threads or physical_cores()


def runtime_for(config: RuntimeConfig) -> Runtime:
    """The measuring process for ``config``'s provider and threads: started on first use, reused after (one per
    provider and thread count), closed when this process exits."""
    import atexit

    key = _key(config)
    runtime = _RUNTIMES.get(key)
    if runtime is None or not runtime.alive():
        if runtime is not None:
            runtime.close()
        if not _RUNTIMES:
            atexit.register(close_runtimes)
        runtime = _RUNTIMES[key] = Runtime(*key)
    return runtime


def fresh_runtime_for(config: RuntimeConfig) -> Runtime:
    """:func:`runtime_for`, but a new measuring process in place of the one that has run so far (a process that has
    timed hundreds of layer models measured candidates 1-3% slower than fresh processes did, which is where a later
    `prunecli bench` runs)."""
    old = _RUNTIMES.pop(_key(config), None)
    if old is not None:
        old.close()
    return runtime_for(config)


def close_runtimes() -> None:
    """Stop every measuring process this process started."""
    while _RUNTIMES:
        _RUNTIMES.popitem()[1].close()


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


def median_of_processes(first: Ratio, model_path: Path, baseline_path: Path, config: RuntimeConfig,
                        input_shape: tuple | None, stat: str, halfwidth: float, processes: int = 3,
                        verdict=None, **early) -> Ratio:
    """``first`` (measured in the shared measuring process) and ``processes - 1`` more measurements of the same
    pair, each in a fresh measuring process, combined: the median ratio, the median interval ends, and the range
    of the per-process ratios as ``spread`` when it exceeds the quarters' (``others``: the median run's reported
    statistics, plus ``processes``: every process's ratio).

    Which process a pair is timed in moves its ratio (on the 2-core test machines by 2-4% between fresh processes,
    benchmarks/results/latency_budget.md), as much as the window a budget lands in; a later `prunecli bench` is
    another process. The median of three processes is what the verdict is decided on. ``early``: the fresh
    processes' early judging (``outside``, ``inside``, ``max_seconds``: :func:`prunecli.runtime.ratio.measure_ratio`).

    ``verdict(ratio)``: what the caller decides on, as threshold comparisons of the ratio and its interval ends
    (e.g. ``(value > upper, value < lower, high > target)``). The median of three is on the same side of every
    threshold as two processes that agree on it, whatever the third measures, so when the first two give the same
    verdict the third is not measured (the value returned is then the median of the two)."""
    import statistics as st

    ratios = [first]
    for _ in range(processes - 1):
        if verdict is not None and len(ratios) == 2 and verdict(ratios[0]) == verdict(ratios[1]):
            break
        fresh = Runtime(config.provider, config.threads or physical_cores())
        try:
            model = fresh.open("model", model_path, config, input_shape)
            baseline = fresh.open("baseline", baseline_path, config, input_shape)
            ratios.append(fresh.ratio(model, baseline, stat, halfwidth=halfwidth, **early))
        finally:
            fresh.close()
    values = [r.ratio for r in ratios]
    middle = sorted(ratios, key=lambda r: r.ratio)[len(ratios) // 2]
    across = (max(values) - min(values)) / st.median(values) if st.median(values) else 0.0
    others = {**middle.others, "processes": values}
    return Ratio(stat, st.median(values), st.median(r.low for r in ratios), st.median(r.high for r in ratios),
                 middle.model_ms, middle.baseline_ms, sum(r.runs for r in ratios),
                 max(max(r.spread for r in ratios), across), others, max(r.disagreement for r in ratios))


def settled_ms(measuring: "Runtime", timed: Timed, stat: str, runs: int = 20, passes: int = 3) -> float:
    """``timed``'s ``stat`` in ms: the lowest of ``passes`` passes of ``runs`` runs (a slow spell of the machine
    would skew a single pass). Its samples are cleared afterwards."""
    values = []
    for _ in range(passes):
        measuring.clear(timed)
        measuring.measure([timed], runs)
        values.append(stat_ms(as_blocks(timed.samples_ms, 10), stat))
    measuring.clear(timed)
    return min(values)
