"""Time bounds for the stages that do a fixed amount of work on a model: tracing its graph, scoring channels,
fitting the budget, shrinking and checking it, exporting and verifying it.

On a model they cannot handle well these stages have no natural end on a small machine (a graph with thousands
of nodes, a budget fit over hundreds of groups), and a deployment pipeline would rather hear "this model's graph
stage ran past 600 s" than hang. Each bounded stage gets ``--timeout`` seconds (default 600; 0 turns the bounds
off); past it, the stage is stopped and the run is refused naming the stage (exit 4, nothing written). Stages
whose length the user chose (fine-tuning epochs, sensitivity levels and batches, the learned search's epochs)
are not bounded.

The bound is a SIGALRM timer, so it works in the main thread of a process (the CLI, torchrun's workers); called
from another thread a stage runs unbounded. A stage deep in one long C++ operation stops when it returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from prunecli.core.errors import RuntimeFailure

DEFAULT_SECONDS = 600.0


class StageTimeout(RuntimeFailure):
    """A bounded stage ran past --timeout (exit 4)."""


class _Alarm(BaseException):
    """Raised by the timer inside the stage: not an Exception, so that no ``except Exception`` in the stage (or in a
    library it calls) mistakes it for a failure of its own; :func:`bounded` turns it into StageTimeout."""


@contextlib.contextmanager
def bounded(stage: str, seconds: float | None):
    """Run the body within ``seconds`` (None or 0: unbounded), else raise StageTimeout naming ``stage``."""
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise _Alarm()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, float(seconds))
        yield
        signal.setitimer(signal.ITIMER_REAL, 0)  # done: no alarm may land after this
    except _Alarm:
        raise StageTimeout(f"the {stage} stage ran past --timeout {seconds:g} s on this model, so it was stopped "
                           "and nothing was written; raise --timeout (0: no bound), or keep the layers that make it "
                           "slow intact with --ignore (see `prunecli inspect`)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
