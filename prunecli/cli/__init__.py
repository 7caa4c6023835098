"""The console script: SIGINT is routed through prunecli's handler before anything heavy is imported."""

from __future__ import annotations

import sys


def main() -> None:
    from prunecli.core import interrupts

    interrupts.install()
    try:
        from prunecli.cli.app import app

        app(prog_name="prunecli")
    except KeyboardInterrupt:  # while importing: nothing was started
        interrupts.report_interrupted()
        sys.exit(130)
    except SystemExit as exc:
        # Typer turns a KeyboardInterrupt raised while it parses arguments into a silent exit 130: say it once.
        if exc.code == 130 or (interrupts.received() and exc.code not in (0, None)):
            interrupts.report_interrupted()
            raise SystemExit(130) from None
        raise
