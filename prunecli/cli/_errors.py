"""Errors to exit codes, in one place: the PruneCliError family maps to its code, a config's ValueError is a usage
error (exit 2) through the one adapter :func:`usage`, anything unexpected is exit 4 with a hint, an interrupt 130."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback

import typer

from prunecli.core.errors import PruneCliError, UsageError

state = {"debug": False}
LIGHT_COMMANDS = {"presets"}  # need no native library: no preload


def env_debug() -> bool:
    return os.environ.get("PRUNECLI_DEBUG", "") not in ("", "0")


def fail(message: str, code: int) -> None:
    """One plain line on stderr (no Rich wrapping), so scripts and people read the same thing; exit ``code``."""
    from prunecli.core import distributed

    if not distributed.silent_error():
        sys.stderr.write(f"{distributed.rank_prefix()}error: {message}\n")
    raise typer.Exit(code)


def interrupted() -> None:
    from prunecli.core import interrupts

    interrupts.report_interrupted()
    raise typer.Exit(130)


@contextlib.contextmanager
def usage(renames: dict[str, str] | None = None):
    """Configs validate on construction and raise ValueError naming the field; here that is exit 2, with the
    config's field names replaced by the command's flag names (``{"--batch": "--latency-batch"}``)."""
    try:
        yield
    except ValueError as exc:
        message = str(exc)
        for field, flag in (renames or {}).items():
            message = message.replace(field, flag)
        raise UsageError(message) from exc


def handle_errors(fn):
    """Map the PruneCliError family to its exit code; anything unexpected is exit 4 with a hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from prunecli.core import interrupts

        try:
            if fn.__name__ not in LIGHT_COMMANDS:
                interrupts.preload()
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            interrupted()
        except PruneCliError as exc:
            if interrupts.received():  # a library turned the interrupt into an error of its own
                interrupted()
            if state["debug"]:
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if interrupts.received():
                interrupted()
            if state["debug"]:
                traceback.print_exc()
            from prunecli.core import distributed

            peer = distributed.peer_failure(exc)
            if peer is not None:  # under torchrun: another rank failed first
                if peer:
                    sys.stderr.write(f"error: {peer}\n")
                raise typer.Exit(4)
            first = str(exc).splitlines()[0] if str(exc) else ""
            fail(f"{type(exc).__name__}: {first} (rerun with --debug for the traceback)", 4)

    return wrapper
