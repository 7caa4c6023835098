"""The console script: SIGINT is routed through prunecli's handler before anything heavy is imported."""

from __future__ import annotations

import sys


def main() -> None:
    from . import interrupts

    interrupts.install()
    try:
        from .cli import app

        app(prog_name="prunecli")
    except KeyboardInterrupt:  # while importing, or parsing arguments: nothing was started
        sys.stderr.write("error: interrupted (Ctrl-C)\n")
        sys.exit(130)
