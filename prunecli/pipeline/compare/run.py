"""`prunecli compare`: every point of the grid through the `prune` pipeline (:func:`prunecli.pipeline.prune.run_prune`,
no second path), its bundle reloaded and evaluated on validation and test, timed against the dense model with the
same runtime settings, appended to ``DIR/points.jsonl``; the summaries rewritten after every point.

Resumable: a rerun into the same DIR skips the points already recorded (the grid flags --methods, --budgets,
--seeds may grow or shrink; the flags a point's result depends on may not change, unless --force starts over).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from prunecli.artifacts.bundle import ONNX
from prunecli.artifacts.load import LoadedModel
from prunecli.core.errors import BudgetNotMet, UsageError
from prunecli.core.outputs import check_out_dir
from prunecli.pipeline.compare.grid import SCRATCH, Point, changed_flags, describe_method, flags_json, points
from prunecli.pipeline.compare.summary import write_summaries
from prunecli.train.finetune import FinetuneConfig

SCHEMA_VERSION = 1
STATE = "compare.state.json"  # the point flags of the run that made DIR (the resume check)
POINTS = "points.jsonl"
KEEP = ("none", "best", "all")
KEPT_WITHOUT_BUNDLE = ("report.json", "report.md")  # what --keep none (and best, for the others) leaves of a point


@dataclass(frozen=True)
class CompareConfig:
    """The grid (``methods`` x ``budgets`` x ``seeds``, ``scratch`` controls, ``equal_latency``) and what every point
    shares: ``prune`` (PruneConfig fields other than the budget, allocation, criterion and seed: round_to, ignore,
    latency settings, ...), ``finetune`` (its epochs and seed are set per point: ``epochs`` in all, a method's search
    epochs counted in them)."""

    methods: tuple
    budgets: tuple
    seeds: tuple = (0, 1, 2)
    epochs: int = 5
    scratch: bool = False
    equal_latency: bool = False
    keep: str = "best"
    prune: dict = field(default_factory=dict)
    finetune: FinetuneConfig = FinetuneConfig()
    latency_halfwidth: float = 0.02  # each point's latency against dense: until +-2% or latency_seconds
    latency_seconds: float = 20.0

    def __post_init__(self) -> None:
        if self.keep not in KEEP:
            raise ValueError(f"--keep {self.keep!r} is not one of {', '.join(KEEP)}")
        if self.epochs < 1:
            raise ValueError(f"--epochs {self.epochs} must be >= 1: every point is fine-tuned for the same epochs")
        for method in self.methods:
            if not isinstance(method, str) and method.search_epochs >= self.epochs:
                raise ValueError(f"--methods {method.name}: its search takes {method.search_epochs} of the "
                                 f"{self.epochs} --epochs and leaves none to fine-tune; raise --epochs or lower "
                                 "--search-epochs")

    def grid(self) -> list[Point]:
        return points(self.methods, self.budgets, self.seeds, scratch=self.scratch, equal_latency=self.equal_latency)


class Reporter:
    """What the run tells the person watching (the CLI draws it: Rich or plain lines); silent by default."""

    progress = None  # the prune pipeline's progress bars (fine-tuning epochs), or None

    def start(self, total: int, done: int) -> None: ...

    def point_started(self, index: int, total: int, point: Point, eta_s: float | None) -> None: ...

    def point_finished(self, index: int, total: int, record: dict, eta_s: float | None) -> None: ...


def run_compare(loaded: LoadedModel, config: CompareConfig, out: Path, *, make_data, flags: dict, force: bool = False,
                reporter: Reporter | None = None, placement=None, world=None, measure_latency: bool = True) -> dict:
    """Run (or resume) the grid into ``out``; returns compare.json's content.

    ``make_data(seed)``: fresh loaders for a seed (every point at a seed sees the same data order). ``flags``: the
    command's flags (:data:`prunecli.pipeline.compare.grid.POINT_FLAGS` are checked on resume). Ctrl-C keeps every
    finished point: the summaries are written after each one, and the interrupt propagates (exit 130)."""
    from prunecli.core.distributed import SINGLE, broadcast

    world = world or SINGLE
    reporter = reporter or Reporter()
    recorded_flags = flags_json(flags)
    grid = config.grid()
    round_to = _round_to_per_budget(loaded, config)  # unreachable FLOPs/params budgets: exit 2, nothing written
    done = _prepare_out(out, recorded_flags, force) if world.main else {}
    done_keys = set(broadcast(world, sorted(done)))  # under torchrun every rank runs the same points
    # rank 0 evaluates the dense model once; every rank's prunes take its accuracy (none evaluates it again)
    dense = broadcast(world, _dense(loaded, config, out, make_data, placement, measure_latency) if world.main else None)
    header = {"schema_version": SCHEMA_VERSION, "model": flags.get("model"), "data": flags.get("data"),
              "flags": recorded_flags, "grid": {"methods": [describe_method(m) for m in config.methods],
                                               "budgets": [b.key for b in config.budgets], "seeds": list(config.seeds),
                                               "epochs": config.epochs, "scratch": config.scratch,
                                               "equal_latency": config.equal_latency, "keep": config.keep},
              "dense": dense}
    records = [r for r in done.values() if r["key"] in {p.key for p in grid}]
    todo = [p for p in grid if p.key not in done_keys]
    reporter.start(len(grid), len(grid) - len(todo))
    walls = [(r["method"], r["wall_s"]) for r in records]  # what each method's points took, for the ETA
    missed: dict = {}  # key -> the record of a point whose budget was not met (it runs again on resume)
    try:
        for i, point in enumerate(todo, start=len(grid) - len(todo) + 1):
            reporter.point_started(i, len(grid), point, _eta(walls, todo[i - 1 - (len(grid) - len(todo)):]))
            record = _run_point(loaded, config, point, out, make_data, round_to, placement, world, reporter,
                                measure_latency, dense.get("test") or dense.get("val"))
            if not world.main:
                continue
            walls.append((record["method"], record["wall_s"]))
            _append(out / POINTS, record)
            if record["status"] == "ok":
                records = [r for r in records if r["key"] != record["key"]] + [record]
            else:
                missed[record["key"]] = record
            if config.keep == "none":
                _strip_bundle(out / "points" / point.dirname)
            write_summaries(out, header, records, missed.values(), plot=False)  # the picture once, at the end
            reporter.point_finished(i, len(grid), record, _eta(walls, todo[i - (len(grid) - len(todo)):]))
    finally:  # finished, failed or interrupted: the tables and the picture of every finished point
        doc = write_summaries(out, header, records, missed.values()) if world.main else {}
    if world.main and config.keep == "best":
        best = {v["bundle"] for v in doc.get("verdicts", []) if v.get("bundle")}
        for record in records:
            if record.get("bundle") and record["bundle"] not in best:
                _strip_bundle(out / record["bundle"])
    return doc


def _eta(walls: list, remaining: list) -> float | None:
    """Seconds the ``remaining`` points should take: each at its method's mean so far (a learned point costs several
    of the others), a method not timed yet at the mean of all; None before any point finished."""
    if not walls:
        return None
    overall = sum(w for _, w in walls) / len(walls)
    by: dict = {}
    for method, wall in walls:
        by.setdefault(method, []).append(wall)
    return sum(sum(by[p.method_name]) / len(by[p.method_name]) if p.method_name in by else overall for p in remaining)


def check_compare_out(out: Path, flags: dict, force: bool) -> bool:
    """Whether a run into ``out`` resumes (True) or starts afresh (False), refusing (exit 2, before any work) a
    compare run there with other point flags, or a non-empty ``out`` no compare made, unless ``force``. Reads only:
    every rank under torchrun can ask it before the group starts."""
    state = out / STATE
    if not state.is_file():
        check_out_dir(out, force)
        return False
    try:
        recorded = json.loads(state.read_text())["flags"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if force:
            return False
        raise UsageError(f"--out {out}: {state} is damaged ({exc}); pass --force to start over") from exc
    changed = changed_flags(recorded, flags_json(flags))
    if changed and not force:
        raise UsageError(f"--out {out} holds a compare run with other settings ({'; '.join(changed)}): its points "
                         "would not be comparable; rerun with the same flags to resume, another --out, or --force "
                         "to start over")
    return not changed


def _prepare_out(out: Path, flags: dict, force: bool) -> dict:
    """The points already recorded in ``out`` ({key: record}, the last record of each key that succeeded) when the
    run resumes (:func:`check_compare_out`); otherwise ``out`` emptied (with --force) and its state written."""
    if check_compare_out(out, flags, force):
        return _recorded(out / POINTS)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE
    tmp = state.with_name("." + state.name + ".tmp")
    tmp.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "flags": flags}, indent=1) + "\n")
    os.replace(tmp, state)
    return {}


def _recorded(path: Path) -> dict:
    done: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill: that point runs again
                continue
            if record.get("status") == "ok":
                done[record["key"]] = record
    return done


def _append(path: Path, record: dict) -> None:
    """One line per point, flushed to disk before the next point starts (a kill loses at most the running one)."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _strip_bundle(bundle: Path) -> None:
    """Everything of a point's bundle but its report (--keep none, or a point that is not the best)."""
    if not bundle.is_dir():
        return
    for item in bundle.iterdir():
        if item.name not in KEPT_WITHOUT_BUNDLE:
            shutil.rmtree(item) if item.is_dir() else item.unlink()


def _round_to_per_budget(loaded: LoadedModel, config: CompareConfig) -> dict:
    """{budget key: round_to} for the FLOPs/params budgets (latency budgets take the prune default), checked
    reachable before any work. With --round-to, that step; without, the preset's, halved while the budget is out of
    its reach (ResNet-20's residual streams stop FLOPs at 0.117 with 8 and need 4 for 0.1)."""
    from prunecli.plan.constraints import prunable_groups

    fixed = config.prune.get("round_to")
    analyses: dict = {}

    def floor(metric: str, step) -> tuple[float, int]:
        if step not in analyses:
            analyses[step] = prunable_groups(loaded, ignore=config.prune.get("ignore", ()), round_to=step,
                                             min_channels=config.prune.get("min_channels", 1))
        analysis, used = analyses[step]
        return (analysis.min_flops_ratio if metric == "flops" else analysis.min_params_ratio), used

    out: dict = {}
    for budget in config.budgets:
        if budget.metric == "latency":
            out[budget.key] = fixed
            continue
        least, step = floor(budget.metric, fixed)
        while least > budget.value and fixed is None and step > 1:
            least, step = floor(budget.metric, max(1, step // 2))
        if least > budget.value:
            raise UsageError(f"--budgets {budget.key} is out of reach: the most pruning this model allows reaches "
                             f"{least:.3f} of its {budget.metric} (round_to {step}); give a larger fraction"
                             + (", or a smaller --round-to" if fixed and fixed > 1 else ""))
        out[budget.key] = step
    return out


def _dense(loaded: LoadedModel, config: CompareConfig, out: Path, make_data, placement, measure_latency: bool) -> dict:
    """The dense model's row: val and test top-1/top-5, FLOPs, params; ``dense.onnx`` in ``out`` (every point's
    latency baseline, and a `prunecli bench --baseline` for the user)."""
    from prunecli.graph.cost import count_flops, count_params
    from prunecli.runtime.export import export_onnx
    from prunecli.train.finetune import evaluate

    data = make_data(config.seeds[0])
    row = {"val": evaluate(loaded.model, data.val, placement=placement),
           "test": evaluate(loaded.model, data.test, placement=placement) if data.test is not None else None,
           "flops": count_flops(loaded.model, loaded.example_input), "params": count_params(loaded.model)}
    if measure_latency and not (out / "dense.onnx").is_file():
        tmp = out / ".dense.onnx.tmp"
        export_onnx(loaded.model, loaded.example_input, tmp, config.prune.get("opset", 18))
        os.replace(tmp, out / "dense.onnx")
    row["onnx"] = "dense.onnx" if (out / "dense.onnx").is_file() else None
    return row


def _prune_config(config: CompareConfig, point: Point, round_to: dict):
    from prunecli.pipeline.config import PruneConfig
    from prunecli.plan.targets import BudgetTarget, LatencyTarget

    method = point.arch_of if point.method == SCRATCH else point.method
    budget = point.budget
    target = ({"latency": LatencyTarget.parse(f"{budget.value:g}")} if budget.metric == "latency"
              else {budget.metric: BudgetTarget(budget.metric, budget.value)})
    shared = {k: v for k, v in config.prune.items() if k != "round_to"}
    return PruneConfig(**shared, **target, round_to=round_to[budget.key], criterion=method.criterion,
                       allocation=method.allocation, seed=point.seed), method


def _run_point(loaded, config: CompareConfig, point: Point, out: Path, make_data, round_to: dict, placement, world,
               reporter, measure_latency: bool, dense_accuracy: dict | None = None) -> dict:
    """One point through run_prune; its record (status ok, or missed with the reason when its budget was not met)."""
    from prunecli.pipeline.prune import run_prune

    prune_config, method = _prune_config(config, point, round_to)
    search = 0 if point.method == SCRATCH else method.search_epochs
    finetune = dataclasses.replace(config.finetune, epochs=config.epochs - search, seed=point.seed,
                                   from_scratch=point.method == SCRATCH)
    bundle = out / "points" / point.dirname
    base = {"key": point.key, "budget": point.budget.key, "metric": point.budget.metric, "value": point.budget.value,
            "method": point.method_name, "seed": point.seed, "bundle": f"points/{point.dirname}",
            "arch_of": point.arch_of.name if point.method == SCRATCH else None, "search_epochs": search,
            "finetune_epochs": finetune.epochs}
    data = make_data(point.seed)
    t0 = time.perf_counter()
    try:
        report = run_prune(loaded, prune_config, bundle, force=True, measure_latency=False, data=data,
                           finetune=finetune, progress=reporter.progress, placement=placement, world=world,
                           dense_accuracy=dense_accuracy)
    except BudgetNotMet as missed:  # a latency fit that found no plan in its window: the grid goes on
        return {**base, "status": "missed", "error": str(missed), "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if not world.main:
        return base
    if report.get("interrupted"):
        raise KeyboardInterrupt  # the point did not finish: it is not recorded, and runs again on resume
    measured = _measure_point(loaded, config, report, bundle, out, measure_latency)
    # a sensitivity scan reused from the cache (the same model at another seed or budget) is counted at what it
    # cost when it ran: every point's wall time is what the method costs on its own
    return {**base, "status": "ok", **measured, "wall_s": wall + measured["scan_reused_s"], "measured_wall_s": wall}


def _measure_point(loaded, config: CompareConfig, report: dict, bundle: Path, out: Path,
                   measure_latency: bool) -> dict:
    """A point's numbers from its report (validation top-1 of the epoch fine-tuning selected, test top-1 of the
    bundle's model), its latency against dense.onnx, costs, file size and wall times."""
    from prunecli.runtime.pair import ratio_to_baseline

    accuracy = report.get("accuracy", {})
    best = accuracy.get("best_epoch")
    history = report.get("history") or []
    val = next((h["val"] for h in history if h["epoch"] == best), history[-1]["val"] if history else {})
    test = accuracy.get("finetuned") if accuracy.get("split") == "test" else None
    timings = report["timings"]
    finetune_s = timings.get("finetune_s", 0.0)
    scan = timings.get("sensitivity", {}) if isinstance(timings.get("sensitivity"), dict) else {}
    reused = scan.get("scan_s", 0.0) if scan.get("cached") else 0.0
    latency = None
    if measure_latency and (out / "dense.onnx").is_file():
        latency = ratio_to_baseline(bundle / ONNX, out / "dense.onnx", config.prune["latency_settings"],
                                    loaded.input_shape, halfwidth=config.latency_halfwidth,
                                    max_seconds=config.latency_seconds)
    budget_latency = report["budget"].get("latency")
    return {
        "val_top1": val.get("top1"), "val_top5": val.get("top5"),
        "test_top1": test["top1"] if test else None, "test_top5": test.get("top5") if test else None,
        "before_finetune_top1": (accuracy.get("pruned") or {}).get("top1"),
        "best_epoch": best,
        "flops_ratio": report["achieved"]["flops"] / report["dense"]["flops"],
        "params_ratio": report["achieved"]["params"] / report["dense"]["params"],
        "latency_ratio": latency["ratio"] if latency else None,
        "latency_ci95": latency["ci95"] if latency else None,
        "latency_ms": latency["pruned_ms"] if latency else None,
        "latency_stat": latency["stat"] if latency else None,
        "budget_latency": ({k: budget_latency.get(k) for k in ("target", "measured", "ci95", "met", "within_window")}
                           if budget_latency else None),
        "onnx_bytes": (bundle / ONNX).stat().st_size,
        "round_to": report["config"]["round_to"],
        "widths": [g["after"] for g in report["groups"]],
        "scan_reused_s": reused,
        "search_s": timings.get("schedule_s", 0.0) - finetune_s + reused,
        "finetune_s": finetune_s,
        "export_s": sum(timings.get(k, 0.0) for k in ("export_verify_s", "int8_s", "latency_s")),
    }
