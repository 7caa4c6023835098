"""Ctrl-C that always works.

Some libraries swallow ``KeyboardInterrupt`` (Torch-Pruning wraps ``import timm`` in a bare ``except:``) or wrap
it in their own exception types. prunecli's SIGINT handler therefore records every interrupt before raising,
so that :func:`received` tells the CLI the truth whatever exception reaches it, and :func:`deferred` holds an
interrupt back while a library that would swallow it runs, raising it right after.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_state = {"received": False, "deferring": 0, "pending": False, "reported": False, "written": [], "signal": None}


def _handler(signum, frame) -> None:
    _state["received"] = True
    _state["signal"] = signum
    if _state["deferring"]:
        _state["pending"] = True
        return
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through :func:`_handler` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    from prunecli.core.distributed import launched

    if launched():
        # under torchrun the agent stops the other processes with SIGTERM when one fails or is interrupted:
        # the same clean stop (a checkpoint being written is finished first)
        signal.signal(signal.SIGTERM, _handler)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return  # started with interrupts ignored (nohup, a background job): leave it so
    signal.signal(signal.SIGINT, _handler)


def by_sigterm() -> bool:
    """True when the stop came from SIGTERM (torchrun stopping the group), not Ctrl-C."""
    return _state.get("signal") == signal.SIGTERM


def received() -> bool:
    """True once SIGINT arrived in this process (even if a library swallowed or wrapped the exception)."""
    return _state["received"]


def reset() -> None:
    _state.update(received=False, pending=False, deferring=0, reported=False, written=[], signal=None)


def report(message: str) -> None:
    """Write the one interrupt line to stderr (once per process, whoever gets there first)."""
    from prunecli.core.distributed import is_quiet_rank

    if not _state["reported"]:
        _state["reported"] = True
        if not is_quiet_rank():  # under torchrun rank 0 speaks for the group
            sys.stderr.write(f"error: {message}\n")


def wrote(path) -> None:
    """Record an output that is complete and in place (a Ctrl-C after this must not say "nothing was written")."""
    _state["written"].append(str(path))


def report_interrupted() -> None:
    """The one line for a Ctrl-C that stopped a command: what, if anything, was already written in full."""
    done = _state["written"]
    report("interrupted (Ctrl-C); " + (f"{', '.join(done)} had already been written in full" if done
                                       else "nothing was written"))


@contextlib.contextmanager
def deferred():
    """Hold SIGINT back during the block (if prunecli's handler is installed) and raise it right after."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    if _state["pending"] and not _state["deferring"]:
        _state["pending"] = False
        raise KeyboardInterrupt


def preload() -> None:
    """Import the native libraries with interrupts deferred: a KeyboardInterrupt raised inside their C++ start-up
    (pybind11) aborts the process instead of unwinding (seen with ``import torch``)."""
    with deferred():
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        torch_pruning()


_modules: dict = {}


def torch_pruning():
    """``import torch_pruning`` with interrupts deferred: its import swallows KeyboardInterrupt."""
    if "tp" not in _modules:
        with deferred():
            import torch_pruning as tp
        _modules["tp"] = tp
    return _modules["tp"]
