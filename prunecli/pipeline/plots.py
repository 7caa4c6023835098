"""Figures written beside a stage's outputs (sensitivity curves, the learned search's ratios, latency shares):
matplotlib, imported when a figure is drawn."""

from __future__ import annotations


def save_figure(fig, path) -> None:
    """Write a matplotlib figure as PNG under its final name only when complete (a hidden name beside it until
    then), with the user's umask; the figure is closed."""
    import os
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt

    from prunecli.core.outputs import apply_umask

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
