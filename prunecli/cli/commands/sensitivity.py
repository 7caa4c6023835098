"""`prunecli sensitivity`: a per-group sensitivity scan."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from prunecli.cli.configs import data_loaders
from prunecli.cli.options import (
    LEVELS,
    ArchOpt,
    CriterionBatchesOpt,
    DataHelp,
    DeviceOpt,
    IgnoreOpt,
    JsonOpt,
    MinChannelsOpt,
    ModelArg,
    PresetOpt,
    ShapeOpt,
    SkipBadOpt,
    TrustOpt,
    WeightsOpt,
    WorkersOpt,
    choices,
    console,
    load,
    progress_bars,
    typed_inputs,
)
from prunecli.plan.criteria import CRITERIA


def sensitivity(
    model: str = ModelArg,
    data: str = typer.Option(..., "--data", help=DataHelp),
    levels: str = typer.Option(LEVELS, "--levels", help="Fractions of each group's channels to remove."),
    criterion: str = typer.Option("l1", "--criterion", help=f"Which channels go at each level: {choices(CRITERIA)}."),
    metric: str = typer.Option("loss", "--metric", help="loss (validation cross-entropy, smooth) or top1."),
    batches: int = typer.Option(10, "--batches", help="Validation batches evaluated per point (the same ones every time)."),
    out: str = typer.Option("sensitivity", "--out", help="Directory for sensitivity.csv, .json and .png."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rescan even if the cache holds this scan."),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="Levels round to multiples of N channels (default: preset's)."),
    ignore: List[str] = IgnoreOpt,
    min_channels: int = MinChannelsOpt,
    seed: int = typer.Option(0, "--seed", help="Seed for the random criterion and the data order."),
    batch_size: int = typer.Option(64, "--batch-size", help="Evaluation batch size."),
    workers: Optional[int] = WorkersOpt,
    device: str = DeviceOpt,
    skip_bad_images: bool = SkipBadOpt,
    criterion_batches: int = CriterionBatchesOpt,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure how much pruning each channel group alone costs, level by level (no fine-tuning).

    Writes sensitivity.csv (group, level, metric, flops_saved, ...), sensitivity.png and
    sensitivity.json to --out and ranks the groups. The scan is cached (keyed on the model's weights,
    the evaluation data and these settings): `prune --allocation sensitivity` with the same --data,
    --criterion and --batch-size reuses it.

    Examples:

        prunecli sensitivity model.pt --data imagefolder:./data --out sens/

        prunecli sensitivity demo/dense.pt --data digits --metric top1 --levels 0.25,0.5,0.75
    """
    from pathlib import Path

    from prunecli.cli._errors import usage
    from prunecli.core.errors import UsageError
    from prunecli.core.outputs import check_out_dir
    from prunecli.pipeline.sensitivity import scan_document, scan_model, write_outputs
    from prunecli.plan.allocators.sensitivity import Sensitivity
    from prunecli.plan.criteria import CRITERIA, DATA_CRITERIA

    check_out_dir(Path(out), force, inputs=typed_inputs(model, weights, arch, data))
    CRITERIA.get(criterion)
    with usage():
        config = Sensitivity(levels=Sensitivity.parse_levels(levels), criterion=criterion, metric=metric,
                             batches=batches, seed=seed)
    from prunecli.core.device import resolve

    placement = resolve(device)
    loaded = load(model, arch, weights, trust_pickle, input_shape, preset)
    loaders = data_loaders(data, batch_size, workers, loaded, seed, skip_bad_images, placement)
    with progress_bars(enabled=not as_json) as progress:
        scan, _ = scan_model(loaded, loaders, config, ignore=tuple(ignore), round_to=round_to, min_channels=min_channels,
                             criterion_batches=criterion_batches if criterion in DATA_CRITERIA else 0,
                             progress=progress, use_cache=not no_cache, placement=placement)
    if not scan.curves:
        raise UsageError(f"MODEL {loaded.display_name} has no group that loses a channel at --levels {levels}; "
                         "use higher levels or a smaller --round-to")
    write_outputs(scan, out, model=loaded.display_name, force=force)
    doc = scan_document(scan, loaded.display_name)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        from prunecli.cli.render import render_sensitivity

        render_sensitivity(console(), doc, out)
