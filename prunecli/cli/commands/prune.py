"""`prunecli prune`: prune MODEL to a budget and write a verified bundle."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from prunecli.cli.configs import data_loaders
from prunecli.cli.options import (
    AmpOpt,
    ArchOpt,
    CalibrationBatchesOpt,
    CalibrationOpt,
    CriterionBatchesOpt,
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
    MaxQuantDropOpt,
    MinChannelsOpt,
    ModelArg,
    OptimizerOpt,
    PresetOpt,
    ProviderOpt,
    PruneHeadsOpt,
    ReduceRangeOpt,
    RequireInt8Opt,
    SensitivityBatchesOpt,
    SensitivityLevelsOpt,
    SensitivityMetricOpt,
    ShapeOpt,
    SkipBadOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrainBatchOpt,
    TrustOpt,
    WeightDecayOpt,
    WeightsOpt,
    WorkersOpt,
    choices,
    console,
    load,
    progress_bars,
    typed_inputs,
)
from prunecli.pipeline.schedules import SCHEDULES
from prunecli.plan.allocators import ALLOCATORS
from prunecli.plan.allocators.learned import DEFAULT_SEARCH_EPOCHS
from prunecli.plan.criteria import CRITERIA, DATA_CRITERIA

CRITERION_HELP = f"Channel ranking: {choices(CRITERIA)} ({', '.join(sorted(DATA_CRITERIA))} need --data)."
ALLOCATION_HELP = (f"How pruning spreads over groups: {choices(ALLOCATORS)}. Default uniform, or latency (least "
                   "importance lost per measured ms saved) with --latency; global ranks channels across groups; "
                   "sensitivity (a per-group scan) and learned (ratios learned from the task loss) need --data.")
SCHEDULE_HELP = f"How pruning and fine-tuning interleave: {choices(SCHEDULES)} (agp: gradual, cubic; soft: Soft Filter Pruning)."


def prune(
    model: str = ModelArg,
    flops: Optional[str] = typer.Option(None, "--flops", help="FLOPs budget: fraction of dense (0.5) or count (2.1G)."),
    params: Optional[str] = typer.Option(None, "--params", help="Params budget: fraction of dense (0.3) or count (5M)."),
    out: str = typer.Option(..., "--out", help="Output bundle directory (must be empty or absent unless --force)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    criterion: str = typer.Option("l1", "--criterion", help=CRITERION_HELP),
    allocation: Optional[str] = typer.Option(None, "--allocation", help=ALLOCATION_HELP),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="Kept channels are multiples of N (default: preset's)."),
    ignore: List[str] = IgnoreOpt,
    min_channels: int = MinChannelsOpt,
    prune_heads: bool = PruneHeadsOpt,
    max_group_prune: float = MaxGroupPruneOpt,
    seed: int = typer.Option(0, "--seed", help="Seed for random criteria."),
    tolerance: float = typer.Option(0.01, "--tolerance", help="Achieved must be within this relative gap below the target."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds each model stage (graph, channel scoring, budget "
                                  "fit, shrink, export) may take before the run is refused naming it; 0: no bound. "
                                  "Fine-tuning and scans are not bounded."),
    latency: Optional[str] = typer.Option(None, "--latency", help="Latency budget on the runtime: fraction of the "
                                          "dense model's measured latency (0.6) or a time (12ms); see README."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip the report's short dense-vs-pruned latency "
                                    "measurement (without a --latency budget)."),
    provider: str = ProviderOpt,
    threads: Optional[int] = ThreadsOpt,
    latency_batch: Optional[int] = LatencyBatchOpt,
    latency_stat: str = LatencyStatOpt,
    data: Optional[str] = typer.Option(None, "--data", help=DataHelp),
    quantize: str = typer.Option("none", "--quantize", help="none or int8: also write model.int8.onnx "
                                 "(onnxruntime static INT8, calibrated on --data; see `prunecli quantize`)."),
    calibration: str = CalibrationOpt,
    calibration_batches: int = CalibrationBatchesOpt,
    max_quant_drop: float = MaxQuantDropOpt,
    require_int8: bool = RequireInt8Opt,
    reduce_range: str = ReduceRangeOpt,
    schedule: str = typer.Option("oneshot", "--schedule", help=SCHEDULE_HELP),
    agp_steps: int = typer.Option(4, "--agp-steps", help="agp: pruning steps."),
    epochs: int = typer.Option(0, "--epochs", help="Fine-tuning epochs (needs --data)."),
    lr: float = LrOpt,
    optimizer: str = OptimizerOpt,
    weight_decay: float = WeightDecayOpt,
    batch_size: int = TrainBatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: str = DeviceOpt,
    amp: str = AmpOpt,
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Under torchrun on GPUs: BatchNorm statistics over the "
                                 "global batch (SyncBatchNorm)."),
    skip_bad_images: bool = SkipBadOpt,
    distill: bool = DistillOpt,
    distill_weight: float = DistillWeightOpt,
    temperature: float = TemperatureOpt,
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train the pruned architecture from a fresh "
                                      "random initialisation, not the dense weights (the control of 'Rethinking the "
                                      "value of network pruning'; needs --data and --epochs, --schedule oneshot)."),
    criterion_batches: int = CriterionBatchesOpt,
    search_epochs: int = typer.Option(DEFAULT_SEARCH_EPOCHS, "--search-epochs", help="learned: epochs of the allocation search (before --epochs of fine-tuning)."),
    sensitivity_levels: str = SensitivityLevelsOpt,
    sensitivity_metric: str = SensitivityMetricOpt,
    sensitivity_batches: int = SensitivityBatchesOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue fine-tuning from --out/checkpoints/last.pt."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Prune MODEL to a FLOPs, params and/or latency budget and write a verified bundle to --out.

    FLOPs/params: the achieved value is at most the target and within 1% of it. Latency: measured on the
    runtime (onnxruntime, --provider/--threads), at most the target and within 5% below it, or exit 1; the bundle holds model.onnx
    (checked and compared with PyTorch in onnxruntime), model.safetensors + recipe.json (reload with
    prunecli.load_bundle, no pickles), report.json and report.md.

    Examples:

        prunecli prune torchvision:resnet18 --flops 0.5 --out pruned/

        prunecli prune model.pt --params 0.3 --criterion fpgm --allocation global --out pruned/

        prunecli prune torchvision:resnet18 --latency 0.6 --out pruned/   # 60% of dense latency, measured

        prunecli prune model.pt --latency 12ms --threads 4 --latency-batch 8 --out pruned/

        prunecli prune model.pt --latency 0.5 --quantize int8 --data imagefolder:./data --epochs 5 --out pruned/   # met by model.int8.onnx

        prunecli prune pruned/ --flops 0.5 --out pruned-again/   # prune a bundle further

        torchrun --nproc_per_node 8 -m prunecli prune torchvision:resnet50 --flops 0.5 --data imagefolder:/data/imagenet --epochs 90 --amp bf16 --out pruned/
    """
    from pathlib import Path

    from prunecli.cli.configs import allocation as allocation_config
    from prunecli.cli.configs import (
        budget,
        finetune_config,
        latency_settings,
        latency_target,
        prune_config,
        quantize_config,
    )
    from prunecli.cli.configs import schedule as schedule_config
    from prunecli.core import distributed
    from prunecli.pipeline.preflight import check_prune_request, placement_for
    from prunecli.pipeline.prune import run_prune

    if latency is not None and no_latency:
        from prunecli.core.errors import UsageError

        raise UsageError("--latency sets a latency budget, which is measured; drop --no-latency")
    config = prune_config(flops=budget("flops", flops), params=budget("params", params),
                          latency=latency_target(latency),
                          latency_settings=latency_settings(provider, threads, latency_batch, latency_stat),
                          criterion=criterion,
                          allocation=allocation_config(allocation, latency=latency is not None,
                                                       max_group_prune=max_group_prune,
                                                       search_epochs=search_epochs, levels=sensitivity_levels,
                                                       metric=sensitivity_metric, batches=sensitivity_batches),
                          schedule=schedule_config(schedule, agp_steps),
                          round_to=round_to, ignore=tuple(ignore), min_channels=min_channels, prune_heads=prune_heads,
                          seed=seed, tolerance=tolerance, opset=opset, timeout=timeout,
                          quantize=quantize_config(quantize, data, calibration, calibration_batches, max_quant_drop,
                                                   require_int8, reduce_range))
    finetune = finetune_config(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, distill=distill,
                               distill_weight=distill_weight, temperature=temperature, seed=seed, sync_bn=sync_bn,
                               from_scratch=from_scratch)
    check_prune_request(config, out=Path(out), force=force, resume=resume, data=data, epochs=epochs,
                        from_scratch=from_scratch,
                        inputs=typed_inputs(model, weights, arch, data), check_out=not distributed.is_quiet_rank())
    placement = placement_for(device, amp, sync_bn, config.schedule_name, data, epochs)
    if config.latency is not None or config.allocation_name == "latency":
        from prunecli.runtime.timing import check_provider

        check_provider(config.latency_settings.runtime())  # exit 4 before loading: the provider is not usable here
    loaded = load(model, arch, weights, trust_pickle, input_shape, preset)
    loaders = data_loaders(data, batch_size, workers, loaded, seed, skip_bad_images, placement) if data else None
    world = distributed.init(placement.kind)
    try:
        with progress_bars(enabled=not as_json and world.main) as progress:
            report = run_prune(loaded, config, Path(out), force=force, measure_latency=not no_latency, data=loaders,
                               finetune=finetune, resume=resume, progress=progress,
                               criterion_batches=criterion_batches, placement=placement, world=world)
    finally:
        distributed.shutdown()
    if report is None:  # a rank other than 0: rank 0 writes and reports
        return
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from prunecli.cli.render import render_prune

        render_prune(console(), report, out)
    missed = report["budget"].get("latency", {})
    if missed and not missed["met"]:
        fallback = (" (INT8 was not kept: its accuracy guard failed, so the fp32 model was measured)"
                    if report.get("int8", {}).get("kept") == "fp32" else "")
        sys.stderr.write(f"error: --latency {latency}: the final model ({missed['artifact']}{fallback}) measures "
                         f"{missed['measured']:.4g} "
                         f"({missed['unit']}; 95% interval {missed['ci95'][0]:.4g}-{missed['ci95'][1]:.4g}) against the "
                         f"target {missed['target']:.4g}; {out} holds it; "
                         + ("raise --max-quant-drop or fine-tune longer (--epochs) so INT8 is kept, or raise the target\n"
                            if fallback else "rerun on a quieter machine or lower the target\n"))
        raise typer.Exit(1)
    if missed and missed["met"] and missed.get("noisy"):
        from prunecli.cli.render import noise_warning

        sys.stderr.write(noise_warning(f"--latency {latency}: the final check", missed, missed["window"],
                                       "the verdict may not hold in another process (a busy machine, or runs too "
                                       f"short to time steadily: dense {missed['dense_ms']:.3g} ms)",
                                       f"prune alone, or expect a gate to need a margin of {missed['noise']:.0%}"))
    if report.get("int8") and report["int8"]["kept"] == "fp32":
        guard = report["int8"]["guard"]
        sys.stderr.write(f"warning: INT8 lost {guard['drop_points']:.2f} top-1 points on {guard['split']} (more than "
                         f"--max-quant-drop {max_quant_drop:g}); the bundle keeps fp32 only\n")
    if report.get("interrupted"):
        from prunecli.core import interrupts

        interrupts.report(f"interrupted during fine-tuning; {out} holds the bundle from the best checkpoint "
                          f"(epoch {report['accuracy']['best_epoch']}); rerun with --resume to continue")
        raise typer.Exit(130)
