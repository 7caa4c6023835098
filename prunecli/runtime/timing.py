"""Latency on the deployment runtime: onnxruntime sessions, interleaved timing and statistics.

The one home of latency measurement: `prunecli bench` gates on it, and `prune` measures with it. Models are timed
in a measuring process that holds onnxruntime and nothing else (:class:`Runtime`, :mod:`prunecli.runtime._worker`);
several models are timed there in alternating blocks of runs, so that machine noise (frequency changes, other
processes) lands on all of them. Latency is the wall time of one ``session.run`` for one batch, in milliseconds.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from prunecli.core.errors import RuntimeFailure, UsageError

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


def runtime_for(config: RuntimeConfig) -> Runtime:
    """The measuring process for ``config``'s provider and threads: started on first use, reused after (one per
    provider and thread count), closed when this process exits."""
    import atexit

    key = (config.provider, config.threads or physical_cores())
    runtime = _RUNTIMES.get(key)
    if runtime is None or not runtime.alive():
        if runtime is not None:
            runtime.close()
        if not _RUNTIMES:
            atexit.register(close_runtimes)
        runtime = _RUNTIMES[key] = Runtime(*key)
    return runtime


def close_runtimes() -> None:
    """Stop every measuring process this process started."""
    while _RUNTIMES:
        _RUNTIMES.popitem()[1].close()


def measure(models: list, runs: int, block: int = 10, seconds: float | None = None) -> None:
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


# Statistics a ratio of two interleaved models can be decided on (README "The latency budget"): the deployment
# statistics (what a user's requests see) and the low ones that interference cannot push down. ``block-min`` is the
# median over blocks of each block's fastest run: a slow spell spoils the blocks it falls in, not the statistic.
RATIO_STATS = ("block-min", "min", "p10", "p25", "p50", "p90", "p99", "mean")
REPORTED_STATS = ("p50", "p90")  # reported with every decision, whatever it was decided on


def as_blocks(samples_ms: list, block: int) -> list:
    """Samples timed in blocks of ``block`` runs, as a list of blocks (a last partial block dropped; fewer runs than
    one block are one block)."""
    whole = len(samples_ms) // block * block
    return [samples_ms[i:i + block] for i in range(0, whole, block)] if whole else [list(samples_ms)]


def stat_ms(blocks, stat: str) -> float:
    """One model's ``stat`` in ms from its samples as (blocks, runs per block)."""
    import numpy as np

    a = np.asarray(blocks, dtype=np.float64)
    if stat == "block-min":
        return float(np.median(a.reshape(len(a), -1).min(axis=1)))
    if stat == "min":
        return float(a.min())
    if stat == "mean":
        return float(a.mean())
    if stat.startswith("p") and stat[1:].isdigit():
        return float(np.percentile(a, int(stat[1:])))
    raise ValueError(f"latency statistic {stat!r} is not one of {', '.join(RATIO_STATS)}")


@dataclass(frozen=True)
class Ratio:
    """model / baseline latency for one statistic, with a 95% bootstrap interval over interleaved block pairs.

    ``others``: the reported statistics (p50, p90) from the same runs, each ``{"ratio", "ci95"}``. How noisy the
    machine was while it measured (benchmarks/results/latency_stat.md): ``spread``, the ratio's range across four
    consecutive quarters of the run (noise that drifts), and ``disagreement``, how far the p50 ratio is from the
    block-min one (noise that is steady: another process on the cores slows the typical runs of the two models
    unevenly while their fastest runs still escape it), both relative; ``noise`` is the larger."""

    stat: str
    ratio: float
    low: float
    high: float
    model_ms: float
    baseline_ms: float
    runs: int
    spread: float = 0.0
    others: dict = field(default_factory=dict)
    disagreement: float = 0.0

    @property
    def noise(self) -> float:
        return max(self.spread, self.disagreement)

    @property
    def halfwidth(self) -> float:
        """Half the interval's width, relative to the ratio."""
        return (self.high - self.low) / 2 / self.ratio if self.ratio else float("inf")

    def to_json(self) -> dict:
        return {"stat": self.stat, "ratio": self.ratio, "ci95": [self.low, self.high], "model_ms": self.model_ms,
                "baseline_ms": self.baseline_ms, "runs": self.runs, "spread": self.spread,
                "disagreement": self.disagreement, "noise": self.noise, "others": self.others}

    @staticmethod
    def from_json(doc: dict) -> "Ratio":
        return Ratio(doc["stat"], doc["ratio"], doc["ci95"][0], doc["ci95"][1], doc["model_ms"], doc["baseline_ms"],
                     doc["runs"], doc.get("spread", 0.0), doc.get("others", {}), doc.get("disagreement", 0.0))


def _blocks(model: Timed, baseline: Timed, block: int):
    import numpy as np

    pairs = min(len(model.samples_ms), len(baseline.samples_ms)) // block
    m = np.asarray(model.samples_ms[:pairs * block], dtype=np.float64).reshape(pairs, block)
    b = np.asarray(baseline.samples_ms[:pairs * block], dtype=np.float64).reshape(pairs, block)
    return m, b


def _ratio(m, b, stat: str) -> float:
    return stat_ms(m, stat) / stat_ms(b, stat)


def _resampled(a, picks, stat: str):
    """``stat`` of ``a`` (blocks, runs per block) for every resample of its blocks (``picks``: draws x blocks)."""
    import numpy as np

    if stat == "block-min":
        return np.median(a.min(axis=1)[picks], axis=1)
    if stat == "min":
        return a.min(axis=1)[picks].min(axis=1)
    if stat == "mean":
        return a.mean(axis=1)[picks].mean(axis=1)
    return np.percentile(a[picks].reshape(len(picks), -1), int(stat[1:]), axis=1)


def ratio_of(model: Timed, baseline: Timed, stat: str, block: int, seed: int = 0, reported: bool = True) -> Ratio:
    """The ratio of ``stat`` over all runs so far, and its interval from resampling block pairs (each pair ran
    back to back, so machine noise is shared within a pair); with ``reported``, the reported statistics (p50, p90)
    from the same resamples."""
    import numpy as np

    m, b = _blocks(model, baseline, block)
    pairs = len(m)
    picks = np.random.default_rng(seed).integers(0, pairs, (300, pairs))
    intervals = {}
    for s in dict.fromkeys((stat, *(REPORTED_STATS if reported else ()))):
        draws = _resampled(m, picks, s) / _resampled(b, picks, s)
        low, high = np.percentile(draws, [2.5, 97.5])
        intervals[s] = (_ratio(m, b, s), float(low), float(high))
    value, low, high = intervals[stat]
    quarter = pairs // 4
    spread = 0.0
    if quarter >= 2:
        parts = [_ratio(m[i * quarter:(i + 1) * quarter], b[i * quarter:(i + 1) * quarter], stat) for i in range(4)]
        spread = (max(parts) - min(parts)) / value if value else 0.0
    others = {s: {"ratio": r, "ci95": [lo, hi]} for s, (r, lo, hi) in intervals.items() if s in REPORTED_STATS}
    disagreement = abs(_ratio(m, b, "p50") / _ratio(m, b, "block-min") - 1) if pairs else 0.0
    return Ratio(stat, value, low, high, stat_ms(m, stat), stat_ms(b, stat), pairs * block, spread, others,
                 disagreement)


def measure_ratio(model, baseline, stat: str = "p50", *, halfwidth: float = 0.02, block: int = 10,
                  min_runs: int = 60, max_runs: int = 4000, max_seconds: float = 60.0,
                  outside: list | None = None) -> Ratio:
    """Time ``model`` and ``baseline`` interleaved until the ratio's 95% interval is within +-``halfwidth`` of it
    (or ``max_runs`` / ``max_seconds`` runs out; the interval then says how sure it is), or, with ``outside``
    ``[low, high]``, as soon as the interval lies wholly outside that range (a candidate clearly too slow or too
    fast needs no narrow interval to be judged). Runs where the models live (in the measuring process: see
    :class:`Runtime.ratio`); the interval is checked every few blocks."""
    deadline = time.perf_counter() + max_seconds
    step = block
    while True:
        target = min(len(model.samples_ms), len(baseline.samples_ms)) + step
        measure([model, baseline], target, block)
        runs = min(len(model.samples_ms), len(baseline.samples_ms))
        if runs >= min_runs:
            estimate = ratio_of(model, baseline, stat, block, reported=False)
            judged = outside is not None and (estimate.low > outside[1] or estimate.high < outside[0])
            if judged or estimate.halfwidth <= halfwidth or runs >= max_runs or time.perf_counter() > deadline:
                return ratio_of(model, baseline, stat, block)
            step = min(max(block, runs // 4 // block * block), max_runs - runs)


def median_of_processes(first: Ratio, model_path: Path, baseline_path: Path, config: RuntimeConfig,
                        input_shape: tuple | None, stat: str, halfwidth: float, processes: int = 3) -> Ratio:
    """``first`` (measured in the shared measuring process) and ``processes - 1`` more measurements of the same
    pair, each in a fresh measuring process, combined: the median ratio, the median interval ends, and the range
    of the per-process ratios as ``spread`` when it exceeds the quarters' (``others``: the run ``first`` came from,
    plus ``processes``: every process's ratio).

    Which process a pair is timed in moves its ratio (on the 2-core test machines by 2-4% between fresh processes,
    benchmarks/results/latency_budget.md), as much as the window a budget lands in; a later `prunecli bench` is
    another process. The median of three processes is what the verdict is decided on."""
    import statistics as st

    ratios = [first]
    for _ in range(processes - 1):
        fresh = Runtime(config.provider, config.threads or physical_cores())
        try:
            model = fresh.open("model", model_path, config, input_shape)
            baseline = fresh.open("baseline", baseline_path, config, input_shape)
            ratios.append(fresh.ratio(model, baseline, stat, halfwidth=halfwidth))
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
