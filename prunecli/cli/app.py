"""The Typer app: the root options and the commands (one module each under :mod:`prunecli.cli.commands`), each
wrapped once in the error handler that maps the PruneCliError family to exit codes.

Heavy libraries (torch, torch-pruning, onnxruntime) are imported inside commands so that ``prunecli --help`` stays
fast.
"""

from __future__ import annotations

import typer

from prunecli.cli import _errors
from prunecli.cli._errors import handle_errors
from prunecli.cli.commands import (
    bench,
    compare,
    demo,
    export,
    inspect,
    presets,
    prune,
    quantize,
    sensitivity,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune a trained PyTorch model to an explicit FLOPs/params budget, export verified ONNX and measure it.\n\n"
    "Exit codes: 0 ok, 1 budget or gate not met, 2 usage/input error, 3 verification failed, 4 runtime/export error, "
    "130 interrupted.",
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and library warnings.")) -> None:
    _errors.state["debug"] = debug or _errors.env_debug()  # set on every invocation: nothing leaks between runs
    if not _errors.state["debug"]:
        import warnings

        warnings.filterwarnings("ignore")  # library chatter (Torch-Pruning, torchvision) hides our one-line errors


for _module in (inspect, presets, prune, sensitivity, compare, export, bench, quantize, demo):
    _name = _module.__name__.rsplit(".", 1)[1]
    app.command(_name)(handle_errors(getattr(_module, _name)))
