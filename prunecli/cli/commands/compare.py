"""`prunecli compare`: methods x budgets x seeds through `prune`, accuracy against measured latency."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from prunecli.cli.configs import data_loaders
from prunecli.cli.options import (
    AmpOpt,
    ArchOpt,
    DataHelp,
    DeviceOpt,
    DistillOpt,
    DistillWeightOpt,
    IgnoreOpt,
    JsonOpt,
    LatencyBatchOpt,
    LatencyStatOpt,
    LrOpt,
    MaxGroupPruneOpt,
    MinChannelsOpt,
    ModelArg,
    OptimizerOpt,
    PresetOpt,
    ProviderOpt,
    SensitivityBatchesOpt,
    SensitivityLevelsOpt,
    SensitivityMetricOpt,
    ShapeOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrainBatchOpt,
    TrustOpt,
    WeightDecayOpt,
    WeightsOpt,
    WorkersOpt,
    console,
    load,
    progress_bars,
    typed_inputs,
)

DEFAULT_METHODS = "uniform:l1,global:l1,sensitivity:l1,learned"


def compare(
    model: str = ModelArg,
    data: str = typer.Option(..., "--data", help=DataHelp),
    out: str = typer.Option(..., "--out", help="Output directory: points.jsonl, compare.md/.json, pareto.png, "
                            "dense.onnx, points/*/ bundles. A rerun with the same flags resumes."),
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", help="Comma list of allocation[:criterion] (criterion "
                                "default l1); `latency` is added when a latency budget is given."),
    budgets: List[str] = typer.Option(["flops=0.5,0.25"], "--budgets", help="METRIC=F[,F...], METRIC flops, params "
                                      "or latency (fractions of dense); repeatable, any mix."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds, comma list: every method runs every seed."),
    epochs: int = typer.Option(5, "--epochs", help="Training epochs after pruning, every point (a method's search "
                               "epochs count in them)."),
    scratch: bool = typer.Option(False, "--scratch", help="Control: per budget and seed, the first method's pruned "
                                 "architecture re-initialised and trained for the same epochs."),
    equal_latency: bool = typer.Option(False, "--equal-latency", help="At each latency budget, also fit every "
                                       "other method to the same measured latency (compared at equal speed)."),
    keep: str = typer.Option("best", "--keep", help="Bundles kept: none (reports only), best (each budget's best "
                             "point on validation) or all."),
    force: bool = typer.Option(False, "--force", help="Start over in a non-empty --out (a compare run with other "
                               "settings, or something else)."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Do not time the points (no latency budgets)."),
    lr: float = LrOpt,
    optimizer: str = OptimizerOpt,
    weight_decay: float = WeightDecayOpt,
    batch_size: int = TrainBatchOpt,
    train_subset: Optional[int] = typer.Option(None, "--train-subset", help="Train on a fixed subset of N training "
                                               "images (the same for every method and seed)."),
    workers: Optional[int] = WorkersOpt,
    device: str = DeviceOpt,
    amp: str = AmpOpt,
    distill: bool = DistillOpt,
    distill_weight: float = DistillWeightOpt,
    temperature: float = TemperatureOpt,
    search_epochs: Optional[int] = typer.Option(None, "--search-epochs", help="learned: search epochs, counted in "
                                                "--epochs (default 2, at most --epochs - 1)."),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="Kept channels are multiples of N (default: the "
                                           "preset's, halved where a budget is out of its reach)."),
    ignore: List[str] = IgnoreOpt,
    min_channels: int = MinChannelsOpt,
    max_group_prune: float = MaxGroupPruneOpt,
    sensitivity_levels: str = SensitivityLevelsOpt,
    sensitivity_metric: str = SensitivityMetricOpt,
    sensitivity_batches: int = SensitivityBatchesOpt,
    provider: str = ProviderOpt,
    threads: Optional[int] = ThreadsOpt,
    latency_batch: Optional[int] = LatencyBatchOpt,
    latency_stat: str = LatencyStatOpt,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compare pruning methods at several budgets on MODEL and --data: every point is `prunecli prune` with the same
    fine-tuning, evaluated on validation and test and timed against the dense model; the verdicts are chosen on
    validation. Writes compare.md, compare.json and pareto.png to --out; a rerun resumes.

    Examples:

        prunecli compare model.pt --data imagefolder:./data --budgets flops=0.5,0.25 --out cmp/

        prunecli compare model.pt --data fashion-mnist:/usr/share/datasets/fashion-mnist --methods uniform:l1,sensitivity:l1 --budgets flops=0.25 --budgets latency=0.5 --equal-latency --scratch --out cmp/

        torchrun --nproc_per_node 4 -m prunecli compare model.pt --data imagefolder:/data --device cuda --out cmp/
    """
    from pathlib import Path

    from prunecli.cli.configs import compare_methods, finetune_config, latency_settings
    from prunecli.cli.render import CompareProgress
    from prunecli.core import distributed
    from prunecli.core.errors import UsageError
    from prunecli.pipeline.compare import Budget, CompareConfig, check_compare_out, parse_ints, run_compare
    from prunecli.pipeline.preflight import placement_for

    budget_list = Budget.parse_all(budgets)
    seed_list = parse_ints("--seeds", seeds, least=0)
    has_latency = any(b.metric == "latency" for b in budget_list)
    if has_latency and no_latency:
        raise UsageError("--budgets latency=... is measured: drop --no-latency")
    method_list = compare_methods(methods, has_latency, epochs, search_epochs, max_group_prune, sensitivity_levels,
                           sensitivity_metric, sensitivity_batches)
    settings = latency_settings(provider, threads, latency_batch, latency_stat)
    finetune = finetune_config(epochs=epochs if epochs > 0 else 1, lr=lr, optimizer=optimizer,
                               weight_decay=weight_decay, distill=distill, distill_weight=distill_weight,
                               temperature=temperature, progress=not as_json)
    from prunecli.cli._errors import usage

    with usage():
        config = CompareConfig(methods=method_list, budgets=budget_list, seeds=seed_list, epochs=epochs,
                               scratch=scratch, equal_latency=equal_latency, keep=keep, finetune=finetune,
                               prune={"round_to": round_to, "ignore": tuple(ignore), "min_channels": min_channels,
                                      "latency_settings": settings})
        config.grid()
    from prunecli.core.outputs import check_not_input

    check_not_input(Path(out), typed_inputs(model, weights, arch, data))
    flags = {"model": model, "arch": arch, "weights": weights, "input_shape": input_shape,
             "preset": preset, "data": data, "train_subset": train_subset, "epochs": epochs, "lr": lr,
             "optimizer": optimizer, "weight_decay": weight_decay, "batch_size": batch_size, "distill": distill,
             "distill_weight": distill_weight, "temperature": temperature,
             "search_epochs": next((m.search_epochs for m in method_list if m.search_epochs), None),
             "round_to": round_to, "ignore": list(ignore), "min_channels": min_channels,
             "max_group_prune": max_group_prune, "provider": provider, "threads": threads,
             "latency_batch": latency_batch, "latency_stat": latency_stat, "amp": amp,
             "sensitivity_levels": sensitivity_levels, "sensitivity_metric": sensitivity_metric,
             "sensitivity_batches": sensitivity_batches}
    check_compare_out(Path(out), flags, force)  # a changed flag or a foreign --out: exit 2 before any work
    placement = placement_for(device, amp, False, "oneshot", data, epochs)
    if has_latency or not no_latency:
        from prunecli.runtime.timing import check_provider

        check_provider(settings.runtime())
    loaded = load(model, arch, weights, trust_pickle, input_shape, preset)

    def make_data(seed: int):
        return data_loaders(data, batch_size, workers, loaded, seed, placement=placement, train_subset=train_subset)

    make_data(seed_list[0])  # a bad --data or --train-subset: exit 2 before any work
    world = distributed.init(placement.kind)
    try:
        with progress_bars(enabled=not as_json and world.main) as progress:
            reporter = CompareProgress(progress, quiet=as_json or not world.main)
            doc = run_compare(loaded, config, Path(out), make_data=make_data, flags=flags, force=force,
                              reporter=reporter, placement=placement, world=world, measure_latency=not no_latency)
    finally:
        distributed.shutdown()
    if not world.main:
        return
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    from prunecli.cli.render import render_compare

    render_compare(console(), doc, out)
