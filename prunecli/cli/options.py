"""The options every command shares (one definition each) and the helpers commands use to read them."""

from __future__ import annotations

import sys

import typer

__all__ = [*["ProviderOpt", "ThreadsOpt", "LatencyBatchOpt", "LatencyStatOpt", "LrOpt", "OptimizerOpt", "WeightDecayOpt", "TrainBatchOpt", "DistillOpt", "DistillWeightOpt", "TemperatureOpt", "MaxGroupPruneOpt", "SensitivityLevelsOpt", "SensitivityMetricOpt", "SensitivityBatchesOpt"], "AmpOpt", "ArchOpt", "CalibrationBatchesOpt", "CalibrationOpt", "CriterionBatchesOpt", "DataHelp",
           "DeviceOpt", "IgnoreOpt", "JsonOpt", "LEVELS", "MaxQuantDropOpt", "MinChannelsOpt", "ModelArg", "PresetOpt",
           "PruneHeadsOpt", "ReduceRangeOpt", "RequireInt8Opt", "ShapeOpt", "SkipBadOpt", "TrustOpt", "WeightsOpt",
           "WorkersOpt", "choices", "console", "load", "progress_bars", "typed_inputs"]


def choices(registry) -> str:
    """The registry's names for a help text, so help never lists a choice that does not exist."""
    return ", ".join(registry.names())



ModelArg = typer.Argument(..., metavar="MODEL", help="torchvision:NAME[:k=v], file.py:factory, module:factory, "
                          "a .pt/.pth/.safetensors file, or a prunecli bundle directory.")
ArchOpt = typer.Option(None, "--arch", help="Architecture of a weights-only MODEL file, e.g. torchvision:resnet18.")
WeightsOpt = typer.Option(None, "--weights", help="state_dict (.pt/.pth/.safetensors) to load into an architecture MODEL.")
TrustOpt = typer.Option(False, "--trust-pickle", help="Allow a pickled nn.Module: this EXECUTES code from the file.")
ShapeOpt = typer.Option(None, "--input-shape", help="Example input shape, e.g. 1,3,224,224 (default: preset's).")
PresetOpt = typer.Option(None, "--preset", help="Preset name (see `prunecli presets`); matched automatically by default.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document to stdout instead of tables.")
CalibrationOpt = typer.Option("minmax", "--calibration", help="INT8: minmax, entropy or percentile (onnxruntime's calibrators).")
CalibrationBatchesOpt = typer.Option(8, "--calibration-batches", help="INT8: training batches to calibrate on.")
MaxQuantDropOpt = typer.Option(1.0, "--max-quant-drop", help="INT8: keep fp32 if INT8 loses more top-1 points than this on validation.")
ReduceRangeOpt = typer.Option("auto", "--reduce-range", help="INT8: auto (from this CPU: on without VNNI), or on/off "
                              "for the CPU the model will be deployed on.")
RequireInt8Opt = typer.Option(False, "--require-int8", help="INT8: exit 1 (no output) instead of keeping fp32 when the guard fails.")
DataHelp = "digits, imagefolder:DIR, cifar10:DIR, cifar100:DIR, fashion-mnist:DIR, mnist:DIR, file.py:factory, synthetic[:N]."
IgnoreOpt = typer.Option([], "--ignore", help="Module name glob kept intact (repeatable).")
MinChannelsOpt = typer.Option(1, "--min-channels", help="Fewest channels any group keeps.")
PruneHeadsOpt = typer.Option(False, "--prune-heads", help="Attention layers lose whole heads (default: the same "
                             "dimensions from every head).")
WorkersOpt = typer.Option(None, "--workers", help="Data loader worker processes (default: none for data held in "
                          "memory, else the CPUs available to each process, at most 8).")
DeviceOpt = typer.Option("auto", "--device", help="Where data stages run: auto (CUDA when available), cpu, cuda, "
                         "cuda:N or mps. The plan, bundle and ONNX do not depend on it.")
AmpOpt = typer.Option("off", "--amp", help="Mixed precision for training: bf16, fp16 (GPU, with a GradScaler) or off.")
SkipBadOpt = typer.Option(False, "--skip-bad-images", help="imagefolder: decode every image first and leave out "
                          "those that fail (listed in report.json); without it a bad image stops the run (exit 2).")
CriterionBatchesOpt = typer.Option(8, "--criterion-batches", help="Training batches for taylor/activation criteria.")
LEVELS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"  # prunecli.plan.allocators.sensitivity.DEFAULT_LEVELS (kept here: --help imports no torch)
# the runtime a latency budget is measured on (prune, compare)
ProviderOpt = typer.Option("cpu", "--provider", help="Latency: onnxruntime provider, cpu, cuda or tensorrt.")
ThreadsOpt = typer.Option(None, "--threads", help="Latency: intra-op threads (default: physical cores).")
LatencyBatchOpt = typer.Option(None, "--latency-batch", help="Latency: batch (default: the input shape's).")
LatencyStatOpt = typer.Option("p50", "--latency-stat", help="Latency: statistic the budget holds for, p50 or p90.")
# fine-tuning (prune, compare)
LrOpt = typer.Option(0.01, "--lr", help="Peak learning rate (cosine schedule with warmup).")
OptimizerOpt = typer.Option("sgd", "--optimizer", help="sgd or adamw.")
WeightDecayOpt = typer.Option(5e-4, "--weight-decay", help="Weight decay.")
TrainBatchOpt = typer.Option(64, "--batch-size", help="Batch size for training and evaluation.")
DistillOpt = typer.Option(False, "--distill", help="Distil from the dense model (KL on softened logits + task loss).")
DistillWeightOpt = typer.Option(0.7, "--distill-weight", help="Weight of the KL term.")
TemperatureOpt = typer.Option(4.0, "--temperature", help="Distillation temperature.")
# the allocations' settings (prune, compare)
MaxGroupPruneOpt = typer.Option(0.9, "--max-group-prune", help="global, latency: most of a group that may go.")
SensitivityLevelsOpt = typer.Option(LEVELS, "--sensitivity-levels",
                                    help="sensitivity: scan levels (as `prunecli sensitivity --levels`).")
SensitivityMetricOpt = typer.Option("loss", "--sensitivity-metric", help="sensitivity: loss or top1.")
SensitivityBatchesOpt = typer.Option(10, "--sensitivity-batches", help="sensitivity: validation batches per point.")




def typed_inputs(*values) -> list:
    """Paths among the user's arguments (MODEL, --weights, --arch file.py, --data DIR): no output may touch them."""
    import re
    from pathlib import Path

    paths = []
    for value in values:
        if not value:
            continue
        text = str(value)
        for candidate in (text, re.sub(r"^(imagefolder|cifar10|cifar100|fashion-mnist|mnist):", "", text), text.split(".py:")[0] + ".py"):
            if candidate and Path(candidate).exists():
                paths.append(Path(candidate))
                break
    return paths


def console():
    from rich.console import Console

    return Console()


def load(model, arch, weights, trust_pickle, input_shape, preset):
    from prunecli.artifacts.load import load_model

    return load_model(model, arch=arch, weights=weights, trust_pickle=trust_pickle,
                      input_shape=input_shape, preset=preset)


def progress_bars(enabled: bool):
    """Rich progress bars on a terminal; a no-op context otherwise."""
    import contextlib

    if not enabled or not sys.stdout.isatty():
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), console=console(), transient=False)
