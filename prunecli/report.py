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


def _loading_lines(arch: str | None) -> list[str]:
    """How to rebuild the bundle: a data spec rebuilds by itself; user code needs the user to name it."""
    from .arch import is_data_spec

    if arch and is_data_spec(arch):
        return ["`prunecli.load_bundle(\"DIR\")` in Python, or DIR as MODEL for any command: the recipe's "
                f"architecture `{arch}` is rebuilt without running code from the bundle."]
    return [f"The model was built by user code (`{arch}`). prunecli never runs code named inside a file, so "
            f"rebuilding needs the spec passed by you: `--arch {arch}` on the command line, "
            f"`prunecli.load_bundle(\"DIR\", arch=\"{arch}\")` in Python. `model.onnx` needs neither."]


def prune_markdown(report: dict) -> str:
    """report.md: the same facts as report.json, for people."""
    lines = [
        "# prunecli prune report",
        "",
        f"- source: `{report['source']['arch']}` ({report['source']['kind']}), sha256 `{report['source']['sha256']}`",
        f"- input shape: {'x'.join(map(str, report['input_shape']))}",
        f"- criterion: {report['config']['criterion']}, allocation: {report['config']['allocation']}, "
        f"round_to: {report['config']['round_to']}, seed: {report['config']['seed']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        "",
        "## Budget (target vs achieved)",
        "",
        "| metric | target | achieved | target ratio | achieved ratio | gap below target | met |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for metric, b in report["budget"].items():
        if metric == "latency":
            continue
        lines.append(f"| {metric} | {b['target']:,} | {b['achieved']:,} | {b['target_ratio']:.4f} | "
                     f"{b['achieved_ratio']:.4f} | {b['gap']:.2%} | {'yes' if b['met'] else 'NO'} |")
    if "latency" in report["budget"]:
        lines += latency_budget_lines(report["budget"]["latency"])
    a, d = report["achieved"], report["dense"]
    lines += [
        "",
        "## Totals",
        "",
        "| quantity | dense | pruned | ratio |",
        "|---|---:|---:|---:|",
        f"| FLOPs | {d['flops']:,} | {a['flops']:,} | {a['flops_ratio']:.4f} |",
        f"| MACs | {d['macs']:,} | {a['macs']:,} | {a['macs_ratio']:.4f} |",
        f"| params | {d['params']:,} | {a['params']:,} | {a['params_ratio']:.4f} |",
        "",
        f"FLOPs: {report['units']['flops']}. MACs: {report['units']['macs']}.",
        "",
        "## ONNX verification",
        "",
        f"- opset {report['onnx']['opset']} ({report['onnx']['exporter']} exporter), dynamic batch, onnx.checker full check",
        ("- `model.onnx` holds its weights: copy it alone" if report["onnx"].get("self_contained", True)
         else f"- weights over 2 GB live in `{report['onnx']['files'][-1]}`: copy it together with `model.onnx`"),
        f"- onnxruntime CPU vs PyTorch: max abs diff {report['onnx']['max_abs_diff']:.3g} "
        f"(batches {', '.join(map(str, report['onnx']['per_batch']))}; allowed {report['onnx']['atol']:g} + "
        f"{report['onnx']['rtol']:g}*|x|)",
        "",
        "## Loading",
        "",
        *_loading_lines(report["source"].get("arch")),
        "",
        "## Channels per group",
        "",
        "| group root | before | after |",
        "|---|---:|---:|",
    ]
    lines += [f"| {g['root']} | {g['before']} | {g['after']} |" for g in report["groups"]]
    if report.get("latency"):
        lat = report["latency"]
        lines += ["", "## Latency (short measurement)", "",
                  f"onnxruntime {lat['provider']}, {lat['threads']} threads, batch {lat['batch']}, {lat['runs']} interleaved "
                  f"runs: dense p50 {lat['dense_p50_ms']:.3f} ms, {lat.get('model', 'model.onnx')} p50 "
                  f"{lat['pruned_p50_ms']:.3f} ms, ratio {lat['ratio_p50']:.3f}."]
    if report.get("int8"):
        lines += ["", "## INT8", ""] + [f"- {line}" for line in int8_lines(report["int8"])]
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v:.2f}" for k, v in report["timings"].items()
                                                  if isinstance(v, (int, float))]
    return "\n".join(lines) + "\n"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def int8_lines(q: dict) -> list[str]:
    """The INT8 model in sentences (report.md and the console)."""
    t, guard, acc = q["types"], q["guard"], q["accuracy"]
    lines = [f"{'kept: ' + q['file'] if q['kept'] == 'int8' else 'NOT kept: fp32 only'} - onnxruntime static "
             f"{t['activation']}/{t['weight']}, reduce_range {t['reduce_range']} ({t['reason']}; {t['isa']})",
             f"guard on {guard['split']}: top-1 fp32 {guard['fp32_top1']:.2f}, INT8 {guard['int8_top1']:.2f} (drop "
             f"{guard['drop_points']:.2f} points, allowed {guard['max_drop_points']:g})",
             f"{acc['split']} through onnxruntime: top-1 fp32 {acc['fp32_top1']:.2f}, INT8 {acc['int8_top1']:.2f}, "
             f"agreement {acc['agreement']:.2f}%"]
    if q.get("latency_vs_fp32"):
        f = q["latency_vs_fp32"]
        lines.append(f"latency p50: INT8 {f['p50_ms']:.3f} ms vs fp32 {f['fp32_p50_ms']:.3f} ms, ratio "
                     f"{f['ratio_p50']:.3f} ({f['runs']} runs, batch {f.get('batch', '?')})")
    if q.get("latency_vs_dense"):
        d = q["latency_vs_dense"]
        lines.append(f"latency p50: INT8 {d['p50_ms']:.3f} ms vs dense fp32 {d['dense_p50_ms']:.3f} ms, ratio "
                     f"{d['ratio_p50']:.3f} ({d['runs']} runs, batch {d['batch']})")
    return lines


def latency_budget_lines(b: dict) -> list[str]:
    lines = ["", f"### Latency budget ({b['stat']}, measured on the runtime)", "",
             "| target | measured | 95% interval | predicted | prediction error | dense | met | within window |",
             "|---:|---:|---:|---:|---:|---:|---|---|",
             f"| {b['target']:.4g} {b['unit']} | {b['measured']:.4g} | {b['ci95'][0]:.4g}-{b['ci95'][1]:.4g} | "
             f"{_num(b['predicted'], '.4g')} | {_num(b['prediction_error'], '+.1%')} | {b['dense_ms']:.3f} ms | "
             f"{'yes' if b['met'] else 'NO'} | {'yes' if b['within_window'] else 'no'} |",
             "",
             f"Measured: {b.get('artifact', 'model.onnx')}. "
             f"{b['provider']} on {b['cpu']}, {b['threads']} threads, batch {b['batch']}, {b['runs']} runs interleaved "
             f"with the dense model; the fit measured {len(b['fit_probes'])} candidate plans. A latency holds for the "
             "machine, runtime and thread count it was measured on."]
    return lines


def render_prune(console: Console, report: dict, out) -> None:
    budget = Table(title="Budget: target vs achieved", header_style="bold")
    for col in ("metric", "target", "achieved", "target ratio", "achieved ratio", "gap", "met"):
        budget.add_column(col, justify="right" if col != "metric" else "left")
    for metric, b in report["budget"].items():
        if metric == "latency":
            dense = b["dense_ms"]
            budget.add_row(f"latency {b['stat']} (ms)", f"{b['target_ms']:.3f}", f"{b['measured_ms']:.3f}",
                           f"{b['target_ms'] / dense:.4f}", f"{b['measured_ratio']:.4f}", f"{b['gap']:.2%}",
                           "yes" if b["met"] else "[red]NO[/red]")
            continue
        budget.add_row(metric, human(b["target"]), human(b["achieved"]), f"{b['target_ratio']:.4f}",
                       f"{b['achieved_ratio']:.4f}", f"{b['gap']:.2%}", "yes" if b["met"] else "[red]NO[/red]")
    console.print(budget)
    if "latency" in report["budget"]:
        b = report["budget"]["latency"]
        console.print(f"Latency of {b.get('artifact', 'model.onnx')} measured on {b['provider']} ({b['cpu']}, "
                      f"{b['threads']} threads, batch {b['batch']}), "
                      f"{b['runs']} interleaved runs: {b['measured']:.4g} {b['unit']} (95% interval "
                      f"{b['ci95'][0]:.4g}-{b['ci95'][1]:.4g}); the latency model predicted {_num(b['predicted'], '.4g')} "
                      f"({_num(b['prediction_error'], '+.1%')}). It holds on this machine and runtime only.")
    a, d = report["achieved"], report["dense"]
    totals = Table(title="Dense vs pruned", header_style="bold")
    for col in ("quantity", "dense", "pruned", "ratio"):
        totals.add_column(col, justify="right" if col != "quantity" else "left")
    for label, key in (("FLOPs", "flops"), ("MACs", "macs"), ("params", "params")):
        totals.add_row(label, human(d[key]), human(a[key]), f"{a[key + '_ratio']:.4f}")
    console.print(totals)
    groups = Table(title="Channels per group", header_style="bold")
    groups.add_column("group root", overflow="fold", min_width=22)
    groups.add_column("before", justify="right")
    groups.add_column("after", justify="right")
    for g in report["groups"]:
        groups.add_row(g["root"], str(g["before"]), str(g["after"]))
    console.print(groups)
    o = report["onnx"]
    console.print(f"ONNX verified: onnxruntime vs PyTorch max abs diff [bold]{o['max_abs_diff']:.2e}[/bold] "
                  f"(opset {o['opset']}, batches {', '.join(map(str, o['per_batch']))}).")
    if report.get("latency"):
        lat = report["latency"]
        console.print(f"Latency (onnxruntime {lat['provider']}, {lat['threads']} threads, {lat['runs']} interleaved runs): "
                      f"dense p50 {lat['dense_p50_ms']:.2f} ms, {lat.get('model', 'model.onnx')} "
                      f"{lat['pruned_p50_ms']:.2f} ms, "
                      f"ratio [bold]{lat['ratio_p50']:.3f}[/bold] (use `prunecli bench` for a gate).")
    if report.get("int8"):
        console.print("INT8: " + "; ".join(int8_lines(report["int8"])) + ".", markup=False)
    int8 = ", model.int8.onnx" if (report.get("int8") or {}).get("kept") == "int8" else ""
    console.print(f"Bundle written to [bold]{out}[/bold] (model.onnx{int8}, model.safetensors, recipe.json, report.json, "
                  "report.md).")


def render_bench(console: Console, doc: dict) -> None:
    table = Table(title=f"Latency (ms) — {doc['provider']}, {doc['threads']} threads, {doc['runs']} runs"
                        + (f", interleaved blocks of {doc['interleaved_block']}" if doc.get("interleaved_block") else ""),
                  header_style="bold")
    table.add_column("model", overflow="fold")
    for col in ("p50", "p90", "p99", "mean", "std", "min", "items/s"):
        table.add_column(col, justify="right")
    for label in ("model", "baseline"):
        if label in doc:
            m = doc[label]
            table.add_row(f"{label}: {m['path']}", *(f"{m[k + '_ms']:.3f}" for k in ("p50", "p90", "p99", "mean", "std", "min")),
                          f"{m['throughput_items_per_s']:.1f}")
    if "ratio" in doc:
        r = doc["ratio"]
        table.add_row("ratio model/baseline", *(f"{r[k]:.3f}" for k in ("p50", "p90", "p99", "mean", "std", "min")), "")
    console.print(table)
    console.print(f"[dim]CPU: {doc['cpu']}; batch {doc['model']['batch']}, input {doc['model']['input_shape']}; "
                  f"session RSS growth {doc['model']['rss_delta_mb']:.0f} MB; measuring-process peak RSS {doc['peak_rss_mb']:.0f} MB[/dim]")
    for c in doc["constraints"]:
        mark = "[green]pass[/green]" if c["passed"] else "[red]FAIL[/red]"
        console.print(f"{mark}  {c['name']}: measured {c['measured']:.4g} (budget {c['budget']:g})")


def render_demo(console: Console, summary: dict) -> None:
    acc = summary["accuracy"]
    table = Table(title=f"prunecli demo: ResNet-20 on digits ({acc['split']} split, {acc['dense']['samples']} images)",
                  header_style="bold")
    for col in ("model", "top-1 %", "top-5 %", "loss"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for label, key in (("dense", "dense"), ("pruned, before fine-tuning", "pruned"), ("pruned + fine-tuned (distilled)", "finetuned")):
        a = acc[key]
        table.add_row(label, f"{a['top1']:.2f}", f"{a['top5']:.2f}", f"{a['loss']:.4f}")
    console.print(table)
    b = summary["budget"]["flops"]
    lat = summary["latency"]
    console.print(f"FLOPs: target {b['target_ratio']:.3f} of dense, achieved [bold]{b['achieved_ratio']:.4f}[/bold]; "
                  f"params {summary['achieved']['params_ratio']:.3f} of dense.")
    console.print(f"ONNX verified: max abs diff {summary['onnx']['max_abs_diff']:.2e} vs PyTorch.")
    console.print(f"Latency (onnxruntime {lat['provider']}, {lat['threads']} threads, batch {lat['batch']}, "
                  f"{lat['runs']} interleaved runs): dense p50 {lat['dense_p50_ms']:.3f} ms, pruned {lat['pruned_p50_ms']:.3f} ms, "
                  f"ratio [bold]{lat['ratio_p50']:.3f}[/bold].")
    console.print(f"Wrote {summary['out']}/ (dense.pt, dense.onnx, pruned/, report.json) in {summary['seconds']:.0f} s"
                  + (" (dense model from cache)." if summary["dense_cached"] else "."))
    console.print("Next:\n  " + "\n  ".join(summary["next"]))


def render_sensitivity(console: Console, doc: dict, out, limit: int = 25) -> None:
    """Groups ranked by sensitivity (mean degradation over the levels), with the curve at each level."""
    levels = [p["level"] for p in doc["curves"][0]["points"]] if doc["curves"] else []
    unit = "top-1 points lost" if doc["metric"] == "top1" else "loss increase"
    table = Table(title=f"Sensitivity: {unit} when one group alone is pruned (criterion {doc['settings']['criterion']}, "
                        f"{doc['samples']} validation images, no fine-tuning)", header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("group", overflow="fold", min_width=14)
    table.add_column("ch", justify="right")
    table.add_column("FLOPs", justify="right")
    table.add_column("mean", justify="right", style="bold")
    shown = list(range(len(levels)))
    if len(levels) > 5:  # keep the table inside 100 columns: five levels spread over the range
        shown = sorted({round(i * (len(levels) - 1) / 4) for i in range(5)})
    for i in shown:
        table.add_column(f"@{levels[i]:g}", justify="right")
    curves = {c["root"]: c for c in doc["curves"]}
    ranking = doc["ranking"]
    for rank, row in enumerate(ranking[:limit], start=1):
        c = curves[row["group"]]
        table.add_row(str(rank), row["group"], str(row["channels"]), f"{row['flops_share']:.1%}",
                      f"{row['sensitivity']:.3g}", *(f"{c['points'][i]['degradation']:.3g}" for i in shown))
    console.print(table)
    if len(ranking) > limit:
        console.print(f"[dim]{len(ranking) - limit} more groups in sensitivity.csv[/dim]")
    dense = f"{doc['dense_value']:.2f}%" if doc["metric"] == "top1" else f"{doc['dense_value']:.4f}"
    console.print(f"Dense {doc['metric']}: {dense}. Scan: {doc['wall_s']:.1f} s"
                  + (" (from the cache)" if doc["cached"] else "") + f". Wrote {out}/ (sensitivity.csv, .json, .png).")


def save_figure(fig, path) -> None:
    """Write a matplotlib figure as PNG under its final name only when complete (a hidden name beside it until
    then), with the user's umask; the figure is closed."""
    import os
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt

    from .outputs import apply_umask

    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".png", dir=Path(path).parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        apply_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_sensitivity(scan, path, *, title: str = "", highlight: int = 8) -> None:
    """Two panels that stay legible with many groups: the curves (the ``highlight`` most sensitive in
    colour, the rest grey) and every group's mean degradation as a sorted bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = scan.ranked()
    top = ranked[:highlight]
    colours = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # no grey: grey means "the rest"
    height = max(4.5, 0.22 * len(ranked) + 1.5)
    fig, (curves_ax, bars_ax) = plt.subplots(1, 2, figsize=(14, height), gridspec_kw={"width_ratios": [1.2, 1]})
    unit = "top-1 points lost" if scan.metric == "top1" else "validation loss increase"
    removed = lambda c: [0] + [p.removed / c.channels for p in c.points]  # noqa: E731  (levels after rounding)
    for c in ranked[highlight:]:
        curves_ax.plot(removed(c), [0] + [p.degradation for p in c.points], color="0.75", linewidth=0.8, zorder=1)
    for i, c in enumerate(top):
        curves_ax.plot(removed(c), [0] + [p.degradation for p in c.points], marker="o", markersize=3,
                       color=colours[i % len(colours)], linewidth=1.8, label=f"{c.root} ({c.channels} ch)", zorder=2)
    curves_ax.axhline(0, color="black", linewidth=0.6)
    curves_ax.set_xlabel("fraction of the group's channels removed, that group only (after rounding to its step)")
    curves_ax.set_ylabel(unit)
    curves_ax.set_title(f"{len(top)} most sensitive groups in colour, {max(0, len(ranked) - len(top))} others grey")
    curves_ax.legend(fontsize=8, loc="upper left")
    curves_ax.grid(alpha=0.3)
    names = [c.root for c in ranked][::-1]
    scores = [c.score for c in ranked][::-1]
    bar_colours = ["0.6"] * len(ranked)
    for i in range(len(top)):
        bar_colours[i] = colours[i % len(colours)]
    bars_ax.barh(range(len(ranked)), scores, color=bar_colours[::-1])
    bars_ax.set_yticks(range(len(ranked)))
    bars_ax.set_yticklabels(names, fontsize=7 if len(ranked) > 30 else 9)
    bars_ax.set_xlabel(f"mean {unit} over the {len(scan.settings['levels'])} scanned levels")
    bars_ax.set_title("every group, most sensitive on top")
    bars_ax.grid(axis="x", alpha=0.3)
    bars_ax.set_ylim(-0.6, len(ranked) - 0.4)
    dense = f"{scan.dense_value:.2f}%" if scan.metric == "top1" else f"{scan.dense_value:.4f}"
    fig.suptitle(f"Sensitivity scan{': ' + title if title else ''} — dense {scan.metric} {dense}, "
                 f"{scan.samples} validation images, criterion {scan.settings['criterion']}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the suptitle
    save_figure(fig, path)


def plot_alpha(history: list, roots: list, path, *, metric: str = "flops", label: int = 10) -> None:
    """The learned allocation's search: each group's keep ratio alpha_k against the step (the ``label``
    groups ending lowest and highest are named), and the expected cost against its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    final = history[-1]["alpha"] if history else []
    order = sorted(range(len(roots)), key=lambda k: final[k])
    named = set(order[: label // 2] + order[-(label - label // 2):]) if len(roots) > label else set(range(len(roots)))
    fig, (ax, cost_ax) = plt.subplots(2, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    cmap = plt.get_cmap("viridis")
    for k, root in enumerate(roots):
        series = [h["alpha"][k] for h in history]
        rank = order.index(k) / max(1, len(roots) - 1)
        if k in named:
            ax.plot(steps, series, color=cmap(rank), linewidth=1.6, label=f"{root} ({final[k]:.2f})")
        else:
            ax.plot(steps, series, color="0.75", linewidth=0.8)
    ax.set_ylabel("keep ratio alpha_k")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Learned allocation: {len(roots)} groups"
                 + (f" ({len(named)} named: lowest and highest at the end; others grey)" if len(roots) > label else ""))
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    ax.grid(alpha=0.3)
    cost_ax.plot(steps, [h["expected_ratio"] for h in history], label=f"expected {metric} / dense", color="C0")
    cost_ax.plot(steps, [h["target_ratio"] for h in history], label="target (falls to the budget)", color="C3",
                 linestyle="--")
    cost_ax.set_xlabel("search step (weights on 90% of training data, alphas on the held-out 10%)")
    cost_ax.set_ylabel(f"{metric} ratio")
    cost_ax.legend(fontsize=8)
    cost_ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)



def render_latency(console: Console, doc: dict, limit: int = 25) -> None:
    lat = doc["latency"]
    table = Table(title=f"Latency per group (predicted; dense measured {lat['dense_ms']:.3f} ms)", header_style="bold")
    table.add_column("group root", overflow="fold", min_width=22)
    for col in ("channels", "step", "latency share", "at min (ms)"):
        table.add_column(col, justify="right", no_wrap=True)
    for g in lat["groups"][:limit]:
        table.add_row(g["root"], str(g["channels"]), str(g["step"]), f"{g['latency_share']:.1%}", f"{g['curve'][0][1]:.3f}")
    console.print(table)
    s, t = lat["staircase"], lat["table"]
    console.print(f"[dim]Latency share: of the dense model's latency, what removing the group down to its minimum would "
                  f"save (that group alone). Channel blocks measured on this runtime: {s['blocks']} (off-block extra "
                  f"cost {', '.join(f'{k} {v:.0%}' for k, v in s['penalties'].items())}). {t['provider']}, "
                  f"{t['threads']} threads, {t['cpu']}; table {t['file']} ({t['measured']} measured, {t['reused']} "
                  "cached).[/dim]")


def plot_latency(doc: dict, path, *, heaviest: int = 6) -> None:
    """Predicted whole-model latency against kept channels for the heaviest groups (one group varied at a time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = doc["latency"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for g in lat["groups"][:heaviest]:
        ax.step([p[0] for p in g["curve"]], [p[1] for p in g["curve"]], where="post", marker=".", markersize=3,
                label=f"{g['root']} ({g['latency_share']:.0%})")
    ax.set_xlabel("kept channels of the group (others dense)")
    ax.set_ylabel("predicted model latency (ms)")
    t = lat["table"]
    ax.set_title(f"{doc['model']}: {t['provider']}, {t['threads']} threads, block {lat['staircase']['block']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
