"""The measuring process: onnxruntime and nothing else, driven by :class:`prunecli.runtime.timing.Runtime`.

Every latency prunecli reports or budgets on is timed here, in a child process that imports onnxruntime and
numpy only (never torch), so that what is measured is the model on the runtime, not the state of the process
that pruned it. The process has one intra-op thread pool of ``threads`` threads, shared by all its sessions and
spinning between operators as onnxruntime's defaults do in a deployed process (a session per model with its own
spinning pool would steal the cores of the other model timed interleaved with it; a pool that does not spin
measures thread wake-ups, not the model: measured on a 2-core VM, mobilenet_v2 at 3.9 ms alone timed 6.3-7.8 ms
without spinning, and its pruned/dense ratio moved from 0.24 to 0.29-0.34).

Protocol: one JSON request per line on stdin, one JSON answer per line on stdout. SIGINT is ignored (the parent
handles Ctrl-C and closes this process); end of stdin ends it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prunecli.runtime.ratio import measure, measure_ratio
from prunecli.runtime.timing import PROVIDERS


class Refused(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


@dataclass
class Live:
    """One open session and its samples."""

    session: object
    runner: object
    batch: int
    input_shape: tuple
    samples_ms: list = field(default_factory=list)

    def run_once(self) -> None:
        start = time.perf_counter_ns()
        self.runner()
        self.samples_ms.append((time.perf_counter_ns() - start) / 1e6)


class Worker:
    def __init__(self, provider: str, threads: int) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.flag = f"--provider {provider}"
        self.provider = PROVIDERS[provider]
        ort.set_global_thread_pool_sizes(threads, 1)
        self.live: dict[int, Live] = {}
        self.next_id = 0
        self.peak_rss_mb = _rss_mb()

    def options(self):
        ort = self.ort
        options = ort.SessionOptions()
        options.use_per_session_threads = False  # the process's one pool (see the module docstring)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options

    def open(self, path: str, name: str, input_shape: list | None, batch: int | None, warmup: int) -> dict:
        import numpy as np

        ort = self.ort
        if self.provider not in ort.get_available_providers():
            raise Refused("runtime", f"{self.flag}: {self.provider} is not available in this onnxruntime "
                                     f"(available: {', '.join(ort.get_available_providers())})")
        providers = [self.provider] if self.provider == "CPUExecutionProvider" else [self.provider, "CPUExecutionProvider"]
        before = _rss_mb()
        try:
            session = ort.InferenceSession(path, sess_options=self.options(), providers=providers)
        except Exception as exc:
            raise Refused("runtime", f"onnxruntime cannot load {name}: {str(exc).splitlines()[0] if str(exc) else exc}")
        active = session.get_providers()[0]
        if active != self.provider:
            raise Refused("runtime", f"{self.flag}: onnxruntime fell back to {active} for {name}; it is not "
                                     "usable on this machine")
        inp = session.get_inputs()[0]
        shape = list(input_shape) if input_shape else [d if isinstance(d, int) else 1 for d in inp.shape]
        if batch:
            shape[0] = batch
        feeds = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        if self.provider == "CPUExecutionProvider":
            runner = lambda: session.run(None, feeds)  # noqa: E731
        else:
            binding = self._gpu_binding(session, feeds)
            runner = lambda: session.run_with_iobinding(binding)  # noqa: E731
        try:
            for _ in range(warmup):
                runner()
        except Exception as exc:
            raise Refused("usage", f"{name} rejects input {tuple(shape)} ({str(exc).splitlines()[0]}); "
                                   "pass --input-shape")
        self.next_id += 1
        self.live[self.next_id] = Live(session, runner, int(shape[0]), tuple(shape))
        return {"id": self.next_id, "batch": int(shape[0]), "input_shape": shape, "provider": active,
                "rss_delta_mb": _rss_mb() - before}

    def _gpu_binding(self, session, feeds):
        """IO binding for GPU providers: inputs copied to the device once, outputs left there."""
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda")
        return binding

    def handle(self, request: dict) -> dict:
        op = request["op"]
        if op == "open":
            return self.open(request["path"], request["name"], request.get("input_shape"), request.get("batch"),
                             request.get("warmup", 10))
        if op == "measure":
            models = [self.live[i] for i in request["ids"]]
            marks = [len(m.samples_ms) for m in models]
            measure(models, marks[0] + request["runs"], request.get("block", 10), request.get("seconds"))
            return {"samples": [m.samples_ms[k:] for m, k in zip(models, marks)]}
        if op == "ratio":
            model, baseline = self.live[request["model"]], self.live[request["baseline"]]
            model.samples_ms.clear()
            baseline.samples_ms.clear()
            ratio = measure_ratio(model, baseline, **request["args"])
            return {"ratio": ratio.to_json(), "samples": [model.samples_ms, baseline.samples_ms]}
        if op == "clear":
            self.live[request["id"]].samples_ms.clear()
            return {}
        if op == "drop":
            self.live.pop(request["id"], None)
            return {}
        if op == "rss":  # sampled after every request (getrusage's peak would include the parent's, kept over exec)
            return {"peak_rss_mb": self.peak_rss_mb}
        if op == "facts":
            return {"pid": os.getpid(), "onnxruntime": self.ort.__version__, "torch_loaded": "torch" in sys.modules,
                    "open_sessions": len(self.live)}
        raise Refused("runtime", f"unknown request {op!r}")


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    provider, threads = sys.argv[1], int(sys.argv[2])
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the protocol stream
    worker = Worker(provider, threads)
    for line in sys.stdin:
        try:
            answer = {"ok": True, **worker.handle(json.loads(line))}
        except Refused as exc:
            answer = {"ok": False, "kind": exc.kind, "message": str(exc)}
        except Exception as exc:  # reported to the parent, which raises it as a runtime failure
            answer = {"ok": False, "kind": "runtime", "message": f"{type(exc).__name__}: {exc}"}
        worker.peak_rss_mb = max(worker.peak_rss_mb, _rss_mb())
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
