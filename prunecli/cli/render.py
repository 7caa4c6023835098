"""Rich rendering of the commands' documents: the only module that draws on the terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from prunecli.pipeline.markdown import human, int8_lines, number_or_dash


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
                      f"{b['ci95'][0]:.4g}-{b['ci95'][1]:.4g}); the latency model predicted {number_or_dash(b['predicted'], '.4g')} "
                      f"({number_or_dash(b['prediction_error'], '+.1%')}). It holds on this machine and runtime only.")
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


def noise_warning(subject: str, measured: dict, window: float, cause: str, advice: str) -> str:
    """One warning line for a latency verdict measured with more noise than ``window`` (``measured``: a dict with
    ``noise``, ``spread`` and ``disagreement``, as report.json's ``budget.latency`` and bench's constraints have)."""
    return (f"warning: {subject}: measured with {measured['noise']:.1%} noise (the ratio moved {measured['spread']:.1%} "
            f"while measured; p50 and block-min ratios disagree by {measured['disagreement']:.1%}), more "
            f"than the {window:.0%} window: {cause}; {advice}\n")


def render_compare(console: Console, doc: dict, out) -> None:
    """Per budget a table (mean +- standard error over seeds; the verdict chosen on validation), then the
    recommendation and where the outputs are."""
    from prunecli.pipeline.compare.summary import plus_minus

    for budget in dict.fromkeys(r["budget"] for r in doc["table"]):
        verdict = next((v for v in doc["verdicts"] if v["budget"] == budget), {})
        table = Table(title=f"{budget}", header_style="bold")
        for col in ("method", "val top-1", "test top-1", "FLOPs", "latency", "wall s", "seeds", "verdict"):
            table.add_column(col, justify="left" if col in ("method", "verdict") else "right",
                             min_width=14 if col == "method" else None)
        for r in sorted((r for r in doc["table"] if r["budget"] == budget),
                        key=lambda r: (r["control"], -(r["val_top1"] or 0))):
            mark = ("control" if r["control"] else
                    {"best": "[bold green]best[/]", "tie": "tie", "only": ""}.get(verdict.get("kind"), "")
                    if r["method"] == verdict.get("best") else ("tie" if r["method"] in verdict.get("tied", []) else ""))
            table.add_row(r["method"], plus_minus(r["val_top1"], r["val_top1_se"]),
                          plus_minus(r["test_top1"], r["test_top1_se"]), number_or_dash(r["flops_ratio"], ".3f"),
                          number_or_dash(r["latency_ratio"], ".3f"), number_or_dash(r["wall_s"], ".0f"),
                          ",".join(map(str, r["seeds"])), mark)
        console.print(table)
    for m in doc.get("missed") or []:
        console.print(f"[yellow]{m['key']}: budget not met[/] ({m['error']})")
    console.print(doc["recommendation"])
    console.print(f"[dim]{out}/compare.md, compare.json, pareto.png; points.jsonl (a rerun resumes)[/dim]")


class CompareProgress:
    """Progress of the grid: a Rich bar for the whole grid (its ETA from the points done) beside the fine-tuning
    bars on a terminal; plain lines on stderr otherwise."""

    def __init__(self, progress, quiet: bool) -> None:
        self.progress, self.quiet, self.task = progress, quiet, None

    def start(self, total: int, done: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("compare", total=total, completed=done, info=f"{done}/{total} points")
        elif not self.quiet and done:
            sys.stderr.write(f"compare: {done} of {total} points already done in --out: resuming\n")

    def point_started(self, index: int, total: int, point, eta_s) -> None:
        left = f", about {_duration(eta_s)} left" if eta_s is not None else ""
        if self.task is not None:
            self.progress.update(self.task, info=f"point {index}/{total}: {point.key}{left}")
        elif not self.quiet:
            sys.stderr.write(f"compare: point {index}/{total}: {point.key}{left}\n")

    def point_finished(self, index: int, total: int, record: dict, eta_s) -> None:
        if record["status"] == "ok":
            said = (f"val {record['val_top1']:.2f}"
                    + (f", test {record['test_top1']:.2f}" if record.get("test_top1") is not None else "")
                    + (f", latency {record['latency_ratio']:.3f}" if record.get("latency_ratio") else "")
                    + f" in {record['wall_s']:.0f} s")
        else:
            said = f"budget not met ({record['error'].split(';')[0]})"
        if self.task is not None:
            self.progress.update(self.task, advance=1)
            self.progress.console.print(f"{record['key']}: {said}")
        elif not self.quiet:
            sys.stderr.write(f"compare: {record['key']}: {said}\n")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
