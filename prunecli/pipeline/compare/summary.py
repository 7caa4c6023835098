"""`prunecli compare`'s outputs from its points: per budget and method the mean and standard error over seeds,
the verdicts (chosen on validation, never on test), compare.md, compare.json and pareto.png.

A verdict names the best method at a budget only where its lead on validation top-1 over the runner-up exceeds the
larger of their two standard errors; otherwise the methods within that margin of the best are a tie.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from prunecli.pipeline.compare.grid import SCRATCH
from prunecli.pipeline.markdown import number_or_dash

FIELDS = ("val_top1", "test_top1", "test_top5", "flops_ratio", "params_ratio", "latency_ratio", "onnx_bytes",
          "wall_s", "search_s", "finetune_s", "export_s")


def mean_se(values: list) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean); the error is None for fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def rows(records: list[dict]) -> list[dict]:
    """One row per (budget, method): every field's mean and standard error over the seeds that finished."""
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["budget"], r["method"]), []).append(r)
    out = []
    for (budget, method), rs in groups.items():
        row = {"budget": budget, "metric": rs[0]["metric"], "value": rs[0]["value"], "method": method,
               "seeds": sorted(r["seed"] for r in rs), "control": method == SCRATCH}
        for f in FIELDS:
            row[f], row[f + "_se"] = mean_se([r.get(f) for r in rs])
        out.append(row)
    return out


def verdicts(table: list[dict]) -> list[dict]:
    """Per budget: the best method by validation top-1 (controls excluded), whether its lead over the runner-up
    exceeds the larger standard error (``best``) or not (``tie``, with the methods within that margin)."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in table):
        ranked = sorted((r for r in table if r["budget"] == budget and not r["control"] and r["val_top1"] is not None),
                        key=lambda r: -r["val_top1"])
        if not ranked:
            continue
        best = ranked[0]
        verdict = {"budget": budget, "best": best["method"], "val_top1": best["val_top1"],
                   "test_top1": best["test_top1"], "test_top1_se": best["test_top1_se"], "methods": len(ranked)}
        if len(ranked) == 1:
            verdict.update(kind="only", tied=[])
        else:
            runner = ranked[1]
            ses = [s for s in (best["val_top1_se"], runner["val_top1_se"]) if s is not None]
            margin = max(ses) if ses else None
            lead = best["val_top1"] - runner["val_top1"]
            beyond = margin is not None and lead > margin
            tied = [] if beyond else [r["method"] for r in ranked[1:]
                                      if margin is None or best["val_top1"] - r["val_top1"] <= margin]
            verdict.update(kind="best" if beyond else "tie", runner_up=runner["method"], lead=lead, margin=margin,
                           tied=tied)
        out.append(verdict)
    return out


def recommendation(table: list[dict], found: list[dict], dense: dict) -> str:
    """One paragraph: per budget, what the verdict says in words, with test top-1 (mean +- standard error)."""
    by = {(r["budget"], r["method"]): r for r in table}
    split = "test" if any(r["test_top1"] is not None for r in table) else "val"  # no test split: validation
    dense_top1 = (dense.get(split) or {}).get("top1")
    parts = []
    for v in found:
        best = by[(v["budget"], v["best"])]
        kept = plus_minus(best[split + "_top1"], best[split + "_top1_se"])
        said = f"at {v['budget']}, {v['best']} keeps {kept} {split} top-1"
        if dense_top1 is not None:
            said += f" (dense {dense_top1:.2f})"
        if v["kind"] == "best":
            runner = by[(v["budget"], v["runner_up"])]
            gap = (best[split + "_top1"] or 0) - (runner[split + "_top1"] or 0)
            said += (f"; {v['runner_up']}, the runner-up, is {v['lead']:.2f} lower on validation, beyond the "
                     f"standard error ({v['margin']:.2f}), and {_versus(gap)} on {split}")
        elif v["kind"] == "tie":
            margin = "one seed: no standard error" if v["margin"] is None else f"within {v['margin']:.2f}"
            said += f", level with {', '.join(v['tied'])} on validation ({margin}): a tie"
        scratch = by.get((v["budget"], SCRATCH))
        if scratch is not None and scratch[split + "_top1"] is not None:
            said += ("; the first method's architecture trained from scratch reaches "
                     f"{plus_minus(scratch[split + '_top1'], scratch[split + '_top1_se'])}")
        parts.append(said)
    if not parts:
        return "No point has finished yet."
    return (f"Chosen on validation, reported on {split}: " + "; ".join(parts) + ". A best method is named only where "
            "its validation lead over the runner-up exceeds the larger standard error over seeds.")


def _versus(gap: float) -> str:
    """The best method's lead on test over the runner-up, in words (test may disagree with validation)."""
    if abs(gap) < 0.005:
        return "level"
    return f"{abs(gap):.2f} {'lower' if gap > 0 else 'higher'}"


def plus_minus(mean, se) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} +- {se:.2f}" if se is not None else f"{mean:.2f}"


def markdown(doc: dict) -> str:
    dense, grid = doc["dense"], doc["grid"]
    machine = doc.get("machine", {})
    lines = [
        f"# prunecli compare: {doc.get('model')} on {doc.get('data')}", "",
        f"Every point is `prunecli prune` at its budget with {grid['epochs']} epochs of training after pruning (a "
        "method's own search epochs counted in them), seeds "
        f"{', '.join(str(s) for s in grid['seeds'])}; the best epoch and the best method are chosen on the validation "
        "split, test is only reported. Mean +- standard error over seeds. FLOPs are FlopCounterMode FLOPs (2 per "
        "multiply-add), not MACs. Latency: each model against the dense one, interleaved, "
        f"{machine.get('latency', 'not measured')}. Wall times: {machine.get('cpu')}, "
        f"{machine.get('torch_threads')} torch threads; a sensitivity scan reused from the cache is counted at its "
        "original cost.", "",
        f"Dense: val top-1 {number_or_dash((dense.get('val') or {}).get('top1'), '.2f')}, test top-1 "
        f"{number_or_dash((dense.get('test') or {}).get('top1'), '.2f')}.", "",
    ]
    for budget in dict.fromkeys(r["budget"] for r in doc["table"]):
        verdict = next((v for v in doc["verdicts"] if v["budget"] == budget), None)
        lines += [f"## {budget}", "",
                  "| method | val top-1 | test top-1 | test top-5 | FLOPs ratio | params ratio | latency ratio | "
                  "ONNX MB | wall s (search + fine-tune + export) | seeds | verdict |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
        for r in sorted((r for r in doc["table"] if r["budget"] == budget),
                        key=lambda r: (r["control"], -(r["val_top1"] or 0))):
            mark = ""
            if verdict and r["method"] == verdict["best"]:
                mark = {"best": "**best**", "tie": "tie (best on val)", "only": "only method"}[verdict["kind"]]
            elif verdict and r["method"] in verdict.get("tied", []):
                mark = "tie"
            elif r["control"]:
                mark = "control"
            name = f"{r['method']} (architecture of the first method)" if r["control"] else r["method"]
            n = number_or_dash
            lines.append(
                f"| {name} | {plus_minus(r['val_top1'], r['val_top1_se'])} | "
                f"{plus_minus(r['test_top1'], r['test_top1_se'])} | {plus_minus(r['test_top5'], r['test_top5_se'])} | "
                f"{n(r['flops_ratio'], '.3f')} | {n(r['params_ratio'], '.3f')} | "
                f"{plus_minus(r['latency_ratio'], r['latency_ratio_se']) if r['latency_ratio'] is not None else '-'} | "
                f"{n((r['onnx_bytes'] or 0) / 1e6, '.2f')} | {n(r['wall_s'], '.0f')} ({n(r['search_s'], '.0f')} + "
                f"{n(r['finetune_s'], '.0f')} + {n(r['export_s'], '.0f')}) | {','.join(map(str, r['seeds']))} | "
                f"{mark} |")
        lines.append("")
    missed = doc.get("missed") or []
    if missed:
        lines += ["Points that did not meet their budget (run again on resume):", ""]
        lines += [f"- {m['key']}: {m['error']}" for m in missed]
        lines.append("")
    lines += ["## Recommendation", "", doc["recommendation"], "",
              "Raw points: points.jsonl (one line per point); every point's report: points/*/report.json; "
              "picture: pareto.png."]
    return "\n".join(lines) + "\n"


def series(table: list[dict]) -> list[dict]:
    """pareto.png's lines: one per method (the control too), points ordered by budget value."""
    out = []
    for method in dict.fromkeys(r["method"] for r in table):
        rs = sorted((r for r in table if r["method"] == method and r["test_top1"] is not None), key=lambda r: r["value"])
        out.append({"method": method, "control": method == SCRATCH,
                    "points": [{"budget": r["budget"], "flops_ratio": r["flops_ratio"],
                                "latency_ratio": r["latency_ratio"], "test_top1": r["test_top1"],
                                "test_top1_se": r["test_top1_se"]} for r in rs]})
    return out


def plot_pareto(lines: list[dict], dense: dict, path: Path, title: str) -> None:
    """Test top-1 against measured latency ratio and against FLOPs ratio; one line per method with standard-error
    bars, the dense model as a star at (1, its top-1), the from-scratch control dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunecli.pipeline.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    dense_test = (dense.get("test") or {}).get("top1")
    for ax, x, label in ((axes[0], "latency_ratio", "measured latency ratio (pruned / dense)"),
                         (axes[1], "flops_ratio", "FLOPs ratio (pruned / dense)")):
        drawn = 0
        for line in lines:
            pts = [p for p in line["points"] if p[x] is not None]
            if not pts:
                continue
            drawn += 1
            ax.errorbar([p[x] for p in pts], [p["test_top1"] for p in pts],
                        yerr=[p["test_top1_se"] or 0 for p in pts], marker="o", capsize=3, label=line["method"],
                        linestyle="--" if line["control"] else "-")
        if not drawn:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        if dense_test is not None:
            ax.plot([1.0], [dense_test], marker="*", markersize=14, color="black", linestyle="none", label="dense")
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_summaries(out: Path, header: dict, records: list[dict], missed=(), plot: bool = True) -> dict:
    """compare.json, compare.md and (with ``plot``) pareto.png from the finished points (each written whole, then
    renamed); returns compare.json's content."""
    from prunecli.runtime.timing import cpu_model, physical_cores

    ok = [r for r in records if r.get("status") == "ok"]
    table = rows(ok)
    found = verdicts(table)
    for v in found:  # the best point's bundle: what --keep best keeps (the best seed on validation)
        best = max((r for r in ok if r["budget"] == v["budget"] and r["method"] == v["best"]),
                   key=lambda r: r["val_top1"])
        v["bundle"] = best["bundle"]
    measured = next((r for r in ok if r.get("latency_stat")), None)
    settings = header["flags"]
    import torch

    machine = {"cpu": cpu_model(), "cores": physical_cores(), "torch_threads": torch.get_num_threads(),
               "latency": (f"{measured['latency_stat']} ratio, onnxruntime {settings.get('provider')} with "
                           f"{settings.get('threads') or physical_cores()} threads on {cpu_model()}, until "
                           "its 95% interval is within +-2% or 20 s") if measured else "not measured"}
    doc = {**header, "machine": machine, "points": ok, "missed": list(missed), "table": table, "verdicts": found,
           "recommendation": recommendation(table, found, header["dense"]), "plot": {"file": "pareto.png",
                                                                                   "series": series(table)}}
    _write(out / "compare.json", json.dumps(doc, indent=1) + "\n")
    _write(out / "compare.md", markdown(doc))
    if ok and plot:
        plot_pareto(doc["plot"]["series"], header["dense"], out / "pareto.png",
                    f"{header.get('model')} on {header.get('data')}")
    return doc


def _write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
