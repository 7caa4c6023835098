"""The command line: parse flags, build configs, call stages, map errors to exit codes.

Heavy libraries (torch, torch-pruning, onnxruntime) are imported inside commands so that
``prunecli --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import List, Optional

import typer

from .config import DEFAULT_SEARCH_EPOCHS
from .errors import PruneCliError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune a trained PyTorch model to an explicit FLOPs/params budget, export verified ONNX and measure it.\n\n"
    "Exit codes: 0 ok, 1 budget or gate not met, 2 usage/input error, 3 verification failed, 4 runtime/export error.",
)

_state = {"debug": False}


def _env_debug() -> bool:
    return os.environ.get("PRUNECLI_DEBUG", "") not in ("", "0")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and library warnings.")) -> None:
    _state["debug"] = debug or _env_debug()  # set on every invocation: nothing leaks between runs
    if not _state["debug"]:
        import warnings

        warnings.filterwarnings("ignore")  # library chatter (Torch-Pruning, torchvision) hides our one-line errors


def _fail(message: str, code: int) -> None:
    # One plain line (no Rich wrapping), so scripts and people read the same thing.
    from . import distributed

    if not distributed.silent_error():
        sys.stderr.write(f"{distributed.rank_prefix()}error: {message}\n")
    raise typer.Exit(code)


LIGHT_COMMANDS = {"presets"}  # need no native library: no preload


def handle_errors(fn):
    """Map the PruneCliError family to its exit code; anything unexpected is exit 4 with a hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from . import interrupts

        try:
            if fn.__name__ not in LIGHT_COMMANDS:
                interrupts.preload()
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            _interrupted()
        except PruneCliError as exc:
            if interrupts.received():  # a library turned the interrupt into an error of its own
                _interrupted()
            if _state["debug"]:
                traceback.print_exc()
            _fail(str(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if interrupts.received():
                _interrupted()
            if _state["debug"]:
                traceback.print_exc()
            from . import distributed

            peer = distributed.peer_failure(exc)
            if peer is not None:  # under torchrun: another rank failed first
                if peer:
                    sys.stderr.write(f"error: {peer}\n")
                raise typer.Exit(4)
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(f"{type(exc).__name__}: {first} (rerun with --debug for the traceback)", 4)

    return wrapper


def _interrupted() -> None:
    from . import interrupts

    interrupts.report_interrupted()
    raise typer.Exit(130)


def _typed_inputs(*values) -> list:
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


def _console():
    from rich.console import Console

    return Console()


# ---------------------------------------------------------------- shared options
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
LEVELS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"  # prunecli.sensitivity.DEFAULT_LEVELS


def _load(model, arch, weights, trust_pickle, input_shape, preset):
    from .load import load_model

    return load_model(model, arch=arch, weights=weights, trust_pickle=trust_pickle,
                      input_shape=input_shape, preset=preset)


# ---------------------------------------------------------------- commands
@app.command()
@handle_errors
def inspect(
    model: str = ModelArg,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    ignore: List[str] = typer.Option([], "--ignore", help="Module name glob to keep intact (repeatable)."),
    round_to: Optional[int] = typer.Option(None, "--round-to", min=1, help="Kept channels are multiples of N (default: preset's)."),
    min_channels: int = typer.Option(1, "--min-channels", min=1, help="Fewest channels any group keeps."),
    prune_heads: bool = PruneHeadsOpt,
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds the graph stage may take (0: no bound)."),
    latency: bool = typer.Option(False, "--latency", help="Measure the latency model on the runtime: per-group "
                                 "latency share and the runtime's channel blocks."),
    plot: Optional[str] = typer.Option(None, "--plot", help="With --latency: write a PNG of latency against kept "
                                       "channels for the heaviest groups."),
    provider: str = typer.Option("cpu", "--provider", help="With --latency: cpu, cuda or tensorrt."),
    threads: Optional[int] = typer.Option(None, "--threads", help="With --latency: intra-op threads (default: physical cores)."),
    latency_batch: Optional[int] = typer.Option(None, "--latency-batch", help="With --latency: batch (default: the input shape's)."),
    as_json: bool = JsonOpt,
) -> None:
    """Show what in MODEL can be pruned: totals, channel groups, what is kept and why, and how far a budget can go.

    Examples:

        prunecli inspect torchvision:resnet18

        prunecli inspect torchvision:mobilenet_v2 --latency --plot latency.png

        prunecli inspect model.pt --json

        prunecli inspect weights.safetensors --arch torchvision:mobilenet_v2 --input-shape 1,3,160,160
    """
    from .inspect import inspect_model

    from pathlib import Path

    from .errors import UsageError

    if plot is not None and not latency:
        raise UsageError("--plot draws the latency model: add --latency")
    import math

    if not (math.isfinite(timeout) and timeout >= 0):
        raise UsageError(f"--timeout {timeout} must be seconds >= 0 (0: no bound)")
    if plot is not None:
        from .outputs import check_out_file

        check_out_file(Path(plot), force=False, flag="--plot", inputs=_typed_inputs(model, weights, arch), suffix=".png")
    settings = _latency_settings(provider, threads, latency_batch, "p50")
    loaded = _load(model, arch, weights, trust_pickle, input_shape, preset)
    from .deadline import bounded

    with bounded("graph", timeout):
        doc = inspect_model(loaded, ignore=tuple(ignore), round_to=round_to, min_channels=min_channels,
                            prune_heads=prune_heads)
    if latency:
        from .config import LatencyTarget, PruneConfig
        from .inspect import prunable_groups
        from .latency_model import describe
        from .planner import LatencyBench

        analysis, _ = prunable_groups(loaded, ignore=tuple(ignore), round_to=round_to, min_channels=min_channels,
                                      prune_heads=prune_heads)
        config = PruneConfig(latency=LatencyTarget(0.5), latency_settings=settings)
        with LatencyBench(loaded, config, analysis, {}) as bench:
            doc["latency"] = describe(bench.model)
        if plot is not None:
            from .report import plot_latency

            plot_latency(doc, Path(plot))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        from .report import render_inspect, render_latency

        render_inspect(_console(), doc)
        if latency:
            render_latency(_console(), doc)


@app.command()
@handle_errors
def presets(as_json: bool = JsonOpt) -> None:
    """List the architecture presets (input shape, round-to, layers kept intact).

    Examples:

        prunecli presets

        prunecli presets --json
    """
    from dataclasses import asdict

    from .preset import all_presets

    items = list(all_presets().values())
    if as_json:
        typer.echo(json.dumps([asdict(p) for p in items], indent=2))
    else:
        from .report import render_presets

        render_presets(_console(), items)


def _config(**kwargs):
    from .config import PruneConfig

    try:
        return PruneConfig(**kwargs)
    except ValueError as exc:
        from .errors import UsageError

        raise UsageError(str(exc)) from exc


def _budget(metric: str, text: Optional[str]):
    if text is None:
        return None
    from .config import BudgetTarget
    from .errors import UsageError

    try:
        return BudgetTarget.parse(metric, text)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


@app.command()
@handle_errors
def prune(
    model: str = ModelArg,
    flops: Optional[str] = typer.Option(None, "--flops", help="FLOPs budget: fraction of dense (0.5) or count (2.1G)."),
    params: Optional[str] = typer.Option(None, "--params", help="Params budget: fraction of dense (0.3) or count (5M)."),
    out: str = typer.Option(..., "--out", help="Output bundle directory (must be empty or absent unless --force)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    criterion: str = typer.Option("l1", "--criterion", help="Channel ranking: l1, l2, fpgm, bn, lamp, random, taylor."),
    allocation: Optional[str] = typer.Option(None, "--allocation", help="How pruning spreads over groups: uniform "
                                             "(default), global, latency (least importance lost per measured ms saved; "
                                             "the default with --latency), sensitivity (a per-group scan), learned "
                                             "(ratios learned from the task loss); the last two need --data."),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="Kept channels are multiples of N (default: preset's)."),
    ignore: List[str] = IgnoreOpt,
    min_channels: int = MinChannelsOpt,
    prune_heads: bool = PruneHeadsOpt,
    max_group_prune: float = typer.Option(0.9, "--max-group-prune", help="global: most of a group that may go."),
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
    provider: str = typer.Option("cpu", "--provider", help="Latency: onnxruntime provider, cpu, cuda or tensorrt."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Latency: intra-op threads (default: physical cores)."),
    latency_batch: Optional[int] = typer.Option(None, "--latency-batch", help="Latency: batch (default: the input shape's)."),
    latency_stat: str = typer.Option("p50", "--latency-stat", help="Latency: statistic the budget holds for, p50 or p90."),
    data: Optional[str] = typer.Option(None, "--data", help=DataHelp),
    quantize: str = typer.Option("none", "--quantize", help="none or int8: also write model.int8.onnx "
                                 "(onnxruntime static INT8, calibrated on --data; see `prunecli quantize`)."),
    calibration: str = CalibrationOpt,
    calibration_batches: int = CalibrationBatchesOpt,
    max_quant_drop: float = MaxQuantDropOpt,
    require_int8: bool = RequireInt8Opt,
    reduce_range: str = ReduceRangeOpt,
    schedule: str = typer.Option("oneshot", "--schedule", help="oneshot, agp (gradual, cubic) or soft (Soft Filter Pruning)."),
    agp_steps: int = typer.Option(4, "--agp-steps", help="agp: pruning steps."),
    epochs: int = typer.Option(0, "--epochs", help="Fine-tuning epochs (needs --data)."),
    lr: float = typer.Option(0.01, "--lr", help="Peak learning rate (cosine schedule with warmup)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adamw."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", help="Weight decay."),
    batch_size: int = typer.Option(64, "--batch-size", help="Batch size for training and evaluation."),
    workers: Optional[int] = WorkersOpt,
    device: str = DeviceOpt,
    amp: str = AmpOpt,
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Under torchrun on GPUs: BatchNorm statistics over the "
                                 "global batch (SyncBatchNorm)."),
    skip_bad_images: bool = SkipBadOpt,
    distill: bool = typer.Option(False, "--distill", help="Distil from the dense model (KL on softened logits + task loss)."),
    distill_weight: float = typer.Option(0.7, "--distill-weight", help="Weight of the KL term."),
    temperature: float = typer.Option(4.0, "--temperature", help="Distillation temperature."),
    criterion_batches: int = CriterionBatchesOpt,
    search_epochs: int = typer.Option(DEFAULT_SEARCH_EPOCHS, "--search-epochs", help="learned: epochs of the allocation search (before --epochs of fine-tuning)."),
    sensitivity_levels: str = typer.Option(LEVELS, "--sensitivity-levels",
                                           help="sensitivity: scan levels (as `prunecli sensitivity --levels`)."),
    sensitivity_metric: str = typer.Option("loss", "--sensitivity-metric", help="sensitivity: loss or top1."),
    sensitivity_batches: int = typer.Option(10, "--sensitivity-batches", help="sensitivity: validation batches per point."),
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

    from . import distributed
    from .prune import run_prune

    if latency is not None and no_latency:
        from .errors import UsageError

        raise UsageError("--latency sets a latency budget, which is measured; drop --no-latency")
    config = _config(flops=_budget("flops", flops), params=_budget("params", params), latency=_latency(latency),
                     latency_settings=_latency_settings(provider, threads, latency_batch, latency_stat),
                     criterion=criterion,
                     allocation=allocation, round_to=round_to, ignore=tuple(ignore), min_channels=min_channels,
                     prune_heads=prune_heads, max_group_prune=max_group_prune, seed=seed, tolerance=tolerance, opset=opset, timeout=timeout,
                     allocation_settings=_allocation_settings(allocation, search_epochs, sensitivity_levels,
                                                              sensitivity_metric, sensitivity_batches),
                     schedule_settings=_schedule_settings(schedule, agp_steps),
                     quantize=_quantize_config(quantize, data, calibration, calibration_batches, max_quant_drop,
                                               require_int8, reduce_range))
    finetune = _finetune_config(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay, distill=distill,
                                distill_weight=distill_weight, temperature=temperature, seed=seed, sync_bn=sync_bn)
    _check_prune_flags(out, force, resume, criterion, config.allocation, schedule, data, epochs,
                       inputs=_typed_inputs(model, weights, arch, data), check_out=not distributed.is_quiet_rank())
    placement = _placement(device, amp, sync_bn, schedule, data, epochs)
    if config.latency is not None or config.allocation == "latency":
        from .latency import check_provider

        check_provider(config.latency_settings.runtime())  # exit 4 before loading: the provider is not usable here
    loaded = _load(model, arch, weights, trust_pickle, input_shape, preset)
    loaders = _data(data, batch_size, workers, loaded, seed, skip_bad_images, placement) if data else None
    world = distributed.init(placement.kind)
    try:
        with _progress(enabled=not as_json and world.main) as progress:
            report = run_prune(loaded, config, Path(out), force=force, measure_latency=not no_latency, data=loaders,
                               finetune=finetune, schedule=schedule, resume=resume, progress=progress,
                               criterion_batches=criterion_batches, placement=placement, world=world)
    finally:
        distributed.shutdown()
    if report is None:  # a rank other than 0: rank 0 writes and reports
        return
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from .report import render_prune

        render_prune(_console(), report, out)
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
    if report.get("int8") and report["int8"]["kept"] == "fp32":
        guard = report["int8"]["guard"]
        sys.stderr.write(f"warning: INT8 lost {guard['drop_points']:.2f} top-1 points on {guard['split']} (more than "
                         f"--max-quant-drop {max_quant_drop:g}); the bundle keeps fp32 only\n")
    if report.get("interrupted"):
        from . import interrupts

        interrupts.report(f"interrupted during fine-tuning; {out} holds the bundle from the best checkpoint "
                          f"(epoch {report['accuracy']['best_epoch']}); rerun with --resume to continue")
        raise typer.Exit(130)


def _quantize_config(kind, data, calibration, calibration_batches, max_drop, require, reduce_range="auto"):
    from .config import QuantizeConfig
    from .errors import UsageError

    if kind not in ("none", "int8"):
        raise UsageError(f"--quantize {kind!r} is not one of none, int8")
    if kind == "none":
        return None
    if data is None:
        raise UsageError("--quantize int8 calibrates and checks the INT8 model on data: pass --data SPEC")
    try:
        return QuantizeConfig(calibration=calibration, calibration_batches=calibration_batches, max_drop=max_drop,
                              require=require, reduce_range=reduce_range)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _latency(text: Optional[str]):
    if text is None:
        return None
    from .config import LatencyTarget
    from .errors import UsageError

    try:
        return LatencyTarget.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _latency_settings(provider: str, threads: Optional[int], batch: Optional[int], stat: str):
    from .config import LatencySettings
    from .errors import UsageError

    try:
        return LatencySettings(provider=provider, threads=threads, batch=batch, stat=stat)
    except ValueError as exc:
        raise UsageError(str(exc).replace("--batch", "--latency-batch")) from exc


def _allocation_settings(allocation: Optional[str], search_epochs: int, levels: str, metric: str, batches: int):
    """The chosen allocator's own frozen settings from its flags (None for allocators that have none)."""
    from .errors import UsageError

    try:
        if allocation == "sensitivity":
            from .sensitivity import SensitivityConfig

            return SensitivityConfig(levels=SensitivityConfig.parse_levels(levels), metric=metric, batches=batches)
        if allocation == "learned":
            from .allocate.learned import SearchConfig

            return SearchConfig(epochs=search_epochs)
    except ValueError as exc:
        raise UsageError(str(exc).replace("--levels", "--sensitivity-levels").replace("--metric", "--sensitivity-metric")
                         .replace("--batches", "--sensitivity-batches")) from exc
    return None


def _schedule_settings(schedule: str, agp_steps: int):
    from .errors import UsageError

    if schedule != "agp":
        return None
    from .schedule import AgpConfig

    try:
        return AgpConfig(steps=agp_steps)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _finetune_config(**kwargs):
    from .errors import UsageError
    from .finetune import FinetuneConfig

    try:
        return FinetuneConfig(**kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _placement(device: str, amp: str, sync_bn: bool, schedule: str, data, epochs: int):
    """--device/--amp resolved (exit 2 for a device this machine lacks), and what torchrun runs refused up front."""
    from . import distributed
    from .device import resolve
    from .errors import UsageError

    placement = resolve(device, amp, local_rank=distributed.local_rank())
    if sync_bn and not distributed.launched():
        raise UsageError("--sync-bn synchronises BatchNorm across torchrun processes: run under torchrun or drop it")
    if sync_bn and placement.kind != "cuda":
        raise UsageError("--sync-bn needs GPUs (torch's SyncBatchNorm runs on CUDA only); drop it on "
                         f"--device {placement.device}")
    if distributed.launched():
        if schedule != "oneshot":
            raise UsageError(f"--schedule {schedule} runs in one process; under torchrun use --schedule oneshot")
        if not data or epochs == 0:
            raise UsageError("under torchrun prunecli fine-tunes in parallel: pass --data SPEC and --epochs N "
                             "(to prune without training, run prunecli without torchrun)")
    return placement


def _check_prune_flags(out, force, resume, criterion, allocation, schedule, data, epochs, inputs=(),
                       check_out: bool = True) -> None:
    """Everything that can be refused before loading anything."""
    from pathlib import Path

    from .allocate import ALLOCATORS
    from .criteria import CRITERIA, DATA_CRITERIA
    from .errors import UsageError
    from .outputs import check_not_input, check_out_dir
    from .schedule import SCHEDULES

    if resume or not check_out:  # under torchrun rank 0 checks --out (the others write nothing)
        check_not_input(Path(out), inputs)
    else:
        check_out_dir(Path(out), force, inputs=inputs)
    CRITERIA.get(criterion)
    ALLOCATORS.get(allocation)
    SCHEDULES.get(schedule)
    from .planner import DATA_NEEDS

    if getattr(ALLOCATORS.get(allocation), "needs", None) in DATA_NEEDS and not data:
        raise UsageError(f"--allocation {allocation} evaluates the model while it allocates: pass --data SPEC "
                         "(e.g. --data digits)")
    if criterion in DATA_CRITERIA and not data:
        raise UsageError(f"--criterion {criterion} needs training data: pass --data SPEC (e.g. --data digits)")
    if epochs and not data:
        raise UsageError(f"--epochs {epochs} needs --data SPEC to fine-tune on (e.g. --data digits)")


def _data(spec, batch_size, workers, loaded, seed, skip_bad_images=False, placement=None):
    from .data import DataConfig, load_data
    from .errors import UsageError

    try:
        config = DataConfig(spec=spec, batch_size=batch_size, workers=workers, skip_bad_images=skip_bad_images,
                            pin_memory=bool(placement and placement.pin_memory),
                            crop_pct=loaded.preset.crop_pct if loaded.preset else 0.875)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    outputs = loaded.output_classes()
    loaders = load_data(config, loaded.input_shape, seed=seed, num_classes=outputs or 10)
    if outputs and loaders.num_classes > outputs:
        raise UsageError(f"--data {spec} has {loaders.num_classes} classes but MODEL {loaded.display_name} outputs "
                         f"{outputs} logits; use a model with {loaders.num_classes} outputs (e.g. num_classes={loaders.num_classes} "
                         "in the architecture spec)")
    return loaders


def _progress(enabled: bool):
    """Rich progress bars on a terminal; a no-op context otherwise."""
    import contextlib

    if not enabled or not sys.stdout.isatty():
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), console=_console(), transient=False)


@app.command()
@handle_errors
def sensitivity(
    model: str = ModelArg,
    data: str = typer.Option(..., "--data", help=DataHelp),
    levels: str = typer.Option(LEVELS, "--levels", help="Fractions of each group's channels to remove."),
    criterion: str = typer.Option("l1", "--criterion", help="Which channels go at each level: l1, l2, fpgm, bn, lamp, random, taylor, activation."),
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

    from .criteria import CRITERIA, DATA_CRITERIA
    from .errors import UsageError
    from .outputs import check_out_dir
    from .sensitivity import SensitivityConfig, scan_document, scan_model, write_outputs

    check_out_dir(Path(out), force, inputs=_typed_inputs(model, weights, arch, data))
    CRITERIA.get(criterion)
    try:
        config = SensitivityConfig(levels=SensitivityConfig.parse_levels(levels), criterion=criterion, metric=metric,
                                   batches=batches, seed=seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    from .device import resolve

    placement = resolve(device)
    loaded = _load(model, arch, weights, trust_pickle, input_shape, preset)
    loaders = _data(data, batch_size, workers, loaded, seed, skip_bad_images, placement)
    with _progress(enabled=not as_json) as progress:
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
        from .report import render_sensitivity

        render_sensitivity(_console(), doc, out)


@app.command()
@handle_errors
def export(
    model: str = ModelArg,
    out: str = typer.Option(..., "--out", help="Output .onnx path."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Export MODEL to ONNX (dynamic batch), run the full onnx checker and compare onnxruntime with PyTorch.

    Examples:

        prunecli export pruned/ --out pruned.onnx

        prunecli export torchvision:resnet18 --out dense.onnx --opset 18
    """
    from pathlib import Path

    from .errors import UsageError
    from .export import run_export
    from .outputs import check_out_file

    inputs = _typed_inputs(model, weights, arch)
    check_out_file(Path(out), force, inputs=inputs, suffix=".onnx")
    if not 7 <= opset <= 23:
        raise UsageError(f"--opset {opset} must be between 7 and 23 (18 is the default)")
    loaded = _load(model, arch, weights, trust_pickle, input_shape, preset)
    info = run_export(loaded, Path(out), opset=opset, force=force, inputs=inputs)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        where = ("weights inside: the file stands alone" if info["self_contained"]
                 else f"weights over 2 GB in {info['files'][1]}: copy both files together")
        typer.echo(f"wrote {info['file']} ({where}): onnxruntime vs PyTorch max abs diff {info['max_abs_diff']:.2e} "
                   f"(opset {opset}, batches {', '.join(map(str, info['per_batch']))})")


@app.command()
@handle_errors
def bench(
    model: str = typer.Argument(..., metavar="MODEL", help="An .onnx file, a prunecli bundle, or any MODEL spec (exported on the fly)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Model to compare against, timed interleaved in the same process."),
    provider: str = typer.Option("cpu", "--provider", help="cpu, cuda or tensorrt; exit 4 if it is not the one actually used."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads (default: physical cores)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size (default: the input shape's)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs per model first."),
    runs: int = typer.Option(100, "--runs", help="Timed runs per model."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Stop after this long even if --runs are not done."),
    stat: str = typer.Option("p50", "--stat", help="Statistic the gates judge: p50, p90, p99 or mean."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Gate: the model's --stat latency."),
    max_latency_ratio: Optional[float] = typer.Option(None, "--max-latency-ratio", help="Gate: model/baseline --stat ratio."),
    junit_xml: Optional[str] = typer.Option(None, "--junit-xml", help="Write one JUnit testcase per constraint here."),
    input_shape: Optional[str] = ShapeOpt,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure onnxruntime latency of MODEL (against --baseline) and gate it: exit 1 when a budget is missed.

    Appends a markdown table to $GITHUB_STEP_SUMMARY when that variable is set.

    Examples:

        prunecli bench pruned/model.onnx --baseline dense.onnx --max-latency-ratio 0.6

        prunecli bench pruned/ --max-latency-ms 5 --stat p90 --junit-xml bench.xml

        prunecli bench torchvision:resnet18 --batch 8 --threads 2 --json
    """
    import tempfile
    from pathlib import Path

    from .bench import BenchConfig, markdown_summary, junit_xml as to_junit, resolve_onnx, run_bench
    from .errors import UsageError

    try:
        config = BenchConfig(provider=provider, threads=threads, batch=batch, warmup=warmup, runs=runs,
                             seconds=seconds, stat=stat, max_latency_ms=max_latency_ms,
                             max_latency_ratio=max_latency_ratio)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if max_latency_ratio is not None and baseline is None:
        raise UsageError("--max-latency-ratio needs --baseline MODEL to compare against")
    from .load import parse_input_shape

    shape = parse_input_shape(input_shape) if input_shape else None
    load_kwargs = dict(arch=arch, weights=weights, trust_pickle=trust_pickle, input_shape=shape, preset=preset)
    with tempfile.TemporaryDirectory(prefix="prunecli-bench-") as tmp:
        model_path, model_shape = resolve_onnx(model, Path(tmp), load_kwargs)
        base_path = None
        if baseline is not None:
            base_path, _ = resolve_onnx(baseline, Path(tmp), {**load_kwargs, "arch": None, "weights": None}, "--baseline")
        doc = run_bench(model_path, base_path, config, shape or model_shape)
    if junit_xml:
        Path(junit_xml).write_text(to_junit(doc))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(markdown_summary(doc))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        from .report import render_bench

        render_bench(_console(), doc)
    missed = [c for c in doc["constraints"] if not c["passed"]]
    if missed:
        for c in missed:
            sys.stderr.write(f"budget not met: {c['name']}: measured {c['measured']:.4g}\n")
        raise typer.Exit(1)


@app.command()
@handle_errors
def quantize(
    model: str = typer.Argument(..., metavar="MODEL", help="A prunecli bundle, an .onnx file, or any MODEL spec (exported first)."),
    data: str = typer.Option(..., "--data", help="Data spec: calibration on its training split, the guard on validation, the report on test."),
    out: str = typer.Option(..., "--out", help="Output directory: model.int8.onnx and quantize.json."),
    calibration: str = CalibrationOpt,
    calibration_batches: int = CalibrationBatchesOpt,
    max_quant_drop: float = MaxQuantDropOpt,
    require_int8: bool = RequireInt8Opt,
    reduce_range: str = ReduceRangeOpt,
    batch_size: int = typer.Option(64, "--batch-size", help="Batch size for calibration and evaluation."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data splits."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input_shape: Optional[str] = ShapeOpt,
    preset: Optional[str] = PresetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """INT8 with onnxruntime (QDQ, per-channel weights, calibrated on --data), judged through onnxruntime.

    The integer types follow this CPU (reduce_range without VNNI; --reduce-range on/off sets it for the CPU the model
    will be deployed on). INT8 is kept only if it loses at most --max-quant-drop top-1 points on validation,
    otherwise fp32 is kept and a warning says so (exit 1 with --require-int8).

    Examples:

        prunecli quantize pruned/ --data imagefolder:./data --out int8/

        prunecli quantize pruned/model.onnx --data digits --out int8/ --calibration entropy --require-int8
    """
    import tempfile
    from pathlib import Path

    from .bundle import INT8_ONNX
    from .errors import UsageError
    from .outputs import atomic_dir, check_out_dir
    from .quantize import run_quantize

    config = _quantize_config("int8", data, calibration, calibration_batches, max_quant_drop, require_int8,
                              reduce_range)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be at least 1")
    check_out_dir(Path(out), force, inputs=_typed_inputs(model, weights, arch))
    with tempfile.TemporaryDirectory(prefix="prunecli-quantize-") as tmp:
        fp32, loaded = _fp32_onnx(model, Path(tmp), arch, weights, trust_pickle, input_shape, preset)
        loaders = _data(data, batch_size, 0, loaded, seed)
        with atomic_dir(Path(out), force) as staged:
            doc = run_quantize(fp32, staged / INT8_ONNX, loaders, config)
            doc["source"] = {"model": model, "data": data}
            (staged / "quantize.json").write_text(json.dumps(doc, indent=2))
    acc, guard = doc["accuracy"], doc["guard"]
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(f"INT8 ({doc['types']['activation']}/{doc['types']['weight']}, reduce_range "
                   f"{doc['types']['reduce_range']}): {acc['split']} top-1 {acc['int8_top1']:.2f} vs fp32 "
                   f"{acc['fp32_top1']:.2f}, agreement {acc['agreement']:.2f}%; written to {out}")
    if doc["kept"] == "fp32":
        sys.stderr.write(f"warning: INT8 lost {guard['drop_points']:.2f} top-1 points on {guard['split']} (more than "
                         f"--max-quant-drop {max_quant_drop:g}); fp32 kept, no {INT8_ONNX} written\n")
        if require_int8:
            raise typer.Exit(1)


def _fp32_onnx(model, tmp, arch, weights, trust_pickle, input_shape, preset):
    """(fp32 .onnx path, what the data loader needs of the model) for a bundle, an .onnx file or a MODEL spec."""
    from pathlib import Path

    from .bench import resolve_onnx

    path = Path(model)
    if path.suffix.lower() == ".onnx" or path.is_dir():  # the exported model is all it takes: no code is loaded
        fp32, _ = resolve_onnx(model, tmp, {})
        return fp32, _OnnxModel(fp32)
    loaded = _load(model, arch, weights, trust_pickle, input_shape, preset)
    from .export import run_export

    fp32 = tmp / "model.onnx"
    run_export(loaded, fp32)
    return fp32, loaded


class _OnnxModel:
    """What the data loader asks of a model, read from an .onnx file's declared input and output shapes."""

    preset = None

    def __init__(self, path) -> None:
        import onnx

        from .errors import UsageError

        graph = onnx.load(str(path), load_external_data=False).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or not all(dims[1:]):
            raise UsageError(f"MODEL {path}: its input is not a fixed (batch, channels, height, width) image tensor; "
                             "quantize the bundle or MODEL spec instead")
        self.input_shape = (1, *dims[1:])
        out = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        self._classes = out[1] if len(out) == 2 and out[1] else None
        self.display_name = str(path)

    def output_classes(self):
        return self._classes


@app.command()
@handle_errors
def demo(
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default: a fresh prunecli-demo-DATE-TIME)."),
    flops: float = typer.Option(0.5, "--flops", help="FLOPs budget as a fraction of dense."),
    epochs: int = typer.Option(15, "--epochs", help="Fine-tuning epochs after pruning."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the whole job on real data that ships offline (scikit-learn's digits), in a few minutes on a CPU.

    Trains a small CIFAR-style ResNet (cached, so a second run skips it), prunes it to --flops, fine-tunes
    with distillation, exports and verifies ONNX, benches dense vs pruned, and prints the summary.

    Examples:

        prunecli demo

        prunecli demo --flops 0.25 --out demo-025/ --json
    """
    from pathlib import Path

    from .demo import check_demo_flags, run_demo

    check_demo_flags(Path(out) if out else None, flops=flops, epochs=epochs)
    with _progress(enabled=not as_json) as progress:
        summary = run_demo(Path(out) if out else None, flops=flops, epochs=epochs, progress=progress)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        from .report import render_demo

        render_demo(_console(), summary)


def main() -> None:
    from .entry import main as entry_main

    entry_main()


if __name__ == "__main__":  # pragma: no cover
    main()
