"""The `sensitivity` command's stage: scan a loaded model as `prune` sees it, and write the scan's files."""

from __future__ import annotations

import json

from prunecli.plan.allocators.sensitivity import Scan, Sensitivity, cached_scan


def scan_model(loaded, loaders, config: Sensitivity, *, ignore=(), round_to=None, min_channels: int = 1,
               criterion_batches: int = 8, progress=None, use_cache: bool = True, placement=None):
    """(scan, analysis) of a loaded model on ``loaders.val``, with the groups `prune` would see."""
    from prunecli.plan.constraints import prunable_groups

    analysis, _ = prunable_groups(loaded, ignore=ignore, round_to=round_to, min_channels=min_channels)
    batches = [batch for _, batch in zip(range(criterion_batches), loaders.train)]
    scan = cached_scan(loaded.model, loaded.example_input, analysis.groups, loaders.val, config,
                       criterion_batches=batches, progress=progress, use_cache=use_cache, placement=placement)
    return scan, analysis


def scan_document(scan: Scan, model: str, top: int = 10) -> dict:
    """The `--json` / sensitivity.json document: the scan plus the ranking."""
    doc = scan.to_json()
    doc.update({"model": model, "cached": scan.cached,
                "ranking": [{"group": c.root, "channels": c.channels, "sensitivity": c.score,
                             "flops_share": c.flops_share} for c in scan.ranked()],
                "most_sensitive": [c.root for c in scan.ranked()[:top]]})
    return doc


def write_outputs(scan: Scan, out, *, model: str, force: bool = False) -> list[str]:
    """sensitivity.csv, sensitivity.json and sensitivity.png into ``out`` (atomically)."""
    from pathlib import Path

    from prunecli.core.outputs import atomic_dir
    from prunecli.pipeline.plots import plot_sensitivity

    names = ["sensitivity.csv", "sensitivity.json", "sensitivity.png"]
    with atomic_dir(Path(out), force) as tmp:
        (tmp / names[0]).write_text(scan.csv_text())
        (tmp / names[1]).write_text(json.dumps(scan_document(scan, model), indent=1))
        plot_sensitivity(scan, tmp / names[2], title=model)
    return names
