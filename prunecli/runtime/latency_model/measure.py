"""Timing one-node models in the measuring process: the lower median of a few passes, every model in turn."""

from __future__ import annotations

from prunecli.runtime.timing import RuntimeConfig


def time_bytes(onnx_bytes: bytes, shape: tuple, runtime: RuntimeConfig, *, target_ms: float = 40.0,
               min_runs: int = 15, max_runs: int = 300, repeats: int = 2) -> float:
    """Median latency (ms) of one model; the lower of ``repeats`` medians, each over about ``target_ms`` of runs."""
    return time_many([(onnx_bytes, shape)], runtime, target_ms=target_ms, min_runs=min_runs, max_runs=max_runs,
                     passes=repeats)[0]


def time_many(models: list, runtime: RuntimeConfig, *, target_ms: float = 30.0, min_runs: int = 15,
              max_runs: int = 300, passes: int = 3) -> list[float]:
    """Median latency (ms) of each (onnx bytes, input shape), the lowest over ``passes`` passes that visit every
    model in turn (so a slow spell of the machine lands on one pass of every model, not on all passes of one)."""
    from prunecli.runtime.timing import runtime_for

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
