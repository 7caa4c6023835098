"""Human output (Rich tables) and report documents. Decides nothing; renders what stages return."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def human(n: float) -> str:
    """1234567 -> '1.23M' (SI prefixes; counts, not bytes)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.4g}" if isinstance(n, float) else str(n)


def render_inspect(console: Console, doc: dict) -> None:
    console.print(
        f"[bold]{doc['model']}[/bold]  input {'x'.join(map(str, doc['input_shape']))}"
        f"  preset {doc['preset'] or '-'}"
    )
    totals = Table(title="Totals", show_header=True, header_style="bold")
    totals.add_column("quantity")
    totals.add_column("value", justify="right")
    totals.add_column("what is counted")
    for key in ("params", "flops", "macs"):
        totals.add_row(key if key != "flops" else "FLOPs", f"{human(doc[key])} ({doc[key]:,})", doc["units"][key])
    console.print(totals)

    groups = Table(title=f"Prunable channel groups ({len(doc['groups'])})", header_style="bold")
    groups.add_column("root layer", overflow="fold", min_width=22)
    for col in ("channels", "min", "step", "FLOPs %", "params %", "layers"):
        groups.add_column(col, justify="right", no_wrap=True)
    for g in doc["groups"]:
        groups.add_row(g["root"], str(g["channels"]), str(g["min_keep"]), str(g["step"]),
                       f"{g['flops_share']:.1%}", f"{g['params_share']:.1%}", str(len(g["layers"])))
    console.print(groups)
    console.print("[dim]FLOPs/params share: of the whole model, in the layers a group touches "
                  "(a layer between two groups counts for both). `--json` lists every layer of a group.[/dim]")

    if doc["not_prunable"]:
        kept = Table(title="Not prunable", header_style="bold")
        kept.add_column("layer")
        kept.add_column("why")
        for item in doc["not_prunable"]:
            kept.add_row(item["layer"], item["reason"])
        console.print(kept)
    c = doc["constraints"]
    console.print(
        f"Reachable range (round_to={c['round_to']}, min_channels={c['min_channels']}): "
        f"FLOPs down to [bold]{doc['min_flops_ratio']:.3f}[/bold] of dense, "
        f"params down to [bold]{doc['min_params_ratio']:.3f}[/bold]."
    )


def render_presets(console: Console, presets: list) -> None:
    table = Table(title="Presets", header_style="bold")
    for col in ("name", "matches", "input shape", "round_to", "ignore", "description"):
        table.add_column(col)
    for p in presets:
        table.add_row(p.name, ", ".join(p.match), "x".join(map(str, p.input_shape)), str(p.round_to),
                      ", ".join(p.ignore) or "-", p.description)
    console.print(table)
