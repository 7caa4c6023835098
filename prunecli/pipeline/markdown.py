"""report.md and the text lines the console shares with it (INT8, latency budget): plain strings, no terminal."""

from __future__ import annotations


def human(n: float) -> str:
    """1234567 -> '1.23M' (SI prefixes; counts, not bytes)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.4g}" if isinstance(n, float) else str(n)


def _loading_lines(arch: str | None) -> list[str]:
    """How to rebuild the bundle: a data spec rebuilds by itself; user code needs the user to name it."""
    from prunecli.models.arch import is_data_spec

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
                  f"runs: dense p50 {number_or_dash(lat['dense_p50_ms'], '.3f')} ms, {lat.get('model', 'model.onnx')} p50 "
                  f"{number_or_dash(lat['pruned_p50_ms'], '.3f')} ms, ratio {number_or_dash(lat['ratio_p50'], '.3f')}."]
    if report.get("int8"):
        lines += ["", "## INT8", ""] + [f"- {line}" for line in int8_lines(report["int8"])]
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v:.2f}" for k, v in report["timings"].items()
                                                  if isinstance(v, (int, float))]
    return "\n".join(lines) + "\n"


def number_or_dash(value, fmt: str) -> str:
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
             f"{number_or_dash(b['predicted'], '.4g')} | {number_or_dash(b['prediction_error'], '+.1%')} | {b['dense_ms']:.3f} ms | "
             f"{'yes' if b['met'] else 'NO'} | {'yes' if b['within_window'] else 'no'} |",
             "",
             f"Measured: {b.get('artifact', 'model.onnx')}. "
             f"{b['provider']} on {b['cpu']}, {b['threads']} threads, batch {b['batch']}, {b['runs']} runs interleaved "
             f"with the dense model; the fit measured {len(b['fit_probes'])} candidate plans. A latency holds for the "
             "machine, runtime and thread count it was measured on."]
    return lines
