"""`prunecli presets`: the architecture presets."""

from __future__ import annotations

import json

import typer

from prunecli.cli.options import JsonOpt, console


def presets(as_json: bool = JsonOpt) -> None:
    """List the architecture presets (input shape, round-to, layers kept intact).

    Examples:

        prunecli presets

        prunecli presets --json
    """
    from dataclasses import asdict

    from prunecli.models.presets import all_presets

    items = list(all_presets().values())
    if as_json:
        typer.echo(json.dumps([asdict(p) for p in items], indent=2))
    else:
        from prunecli.cli.render import render_presets

        render_presets(console(), items)
