"""Pruning schedules: how pruning and fine-tuning interleave. Every schedule ends exactly on the budget.

``oneshot``
    plan once on the dense model, remove the channels, recalibrate BatchNorm, fine-tune.
``agp``
    Zhu & Gupta's automated gradual pruning, as Distiller runs it: the final channel count of every
    group is fixed once, on the dense model, exactly as `oneshot` fits it to the budget; each group
    then loses its channels over k steps following the cubic s_t = s_f + (s_i - s_f) * (1 - t/k)^3
    (of the channels it will lose, rounded to its step), with fine-tuning between steps and the
    channels re-ranked on the current weights at every step. Step k reaches the final counts, so the
    schedule ends on the same budget-exact cost as `oneshot`.
``soft``
    Soft Filter Pruning (He et al. 2018): the channel counts are fixed by the budget once; after every
    epoch the lowest-ranked channels (re-ranked on the current weights) are zeroed but stay trainable,
    so a zeroed filter can recover; at the end the zeroed channels are removed physically.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from prunecli.artifacts.load import LoadedModel
from prunecli.core.device import CPU, Placement, to_cpu_
from prunecli.core.distributed import SINGLE, World, broadcast
from prunecli.core.errors import UsageError
from prunecli.core.registry import Registry
from prunecli.graph.plans import GroupPlan, Plan, select_keep
from prunecli.graph.shrink import MisPruned, build_graph, shrink_copy, zero_channels_
from prunecli.plan.config import PlanConfig
from prunecli.plan.criteria import channel_scores
from prunecli.plan.stage import plan_model
from prunecli.train.finetune import FinetuneConfig, evaluate, fit, recalibrate_bn, reinitialise_

SCHEDULES: Registry = Registry("schedule", "--schedule")


@dataclass(frozen=True)
class Schedule:
    """Base of the schedule configs: the subclass is the schedule, its fields its settings."""

    @property
    def name(self) -> str:
        return SCHEDULES.name_of(self)

    def settings(self) -> dict | None:
        """report.json's ``schedule_settings``: the fields, or None for a schedule without settings."""
        return dataclasses.asdict(self) if dataclasses.fields(self) else None


@dataclass(frozen=True)
class OneShot(Schedule):
    """``--schedule oneshot`` (the default): plan once, remove the channels, recalibrate BatchNorm, fine-tune."""


@dataclass(frozen=True)
class Agp(Schedule):
    """``--schedule agp``: the number of pruning steps (fine-tuning epochs are spread over them)."""

    steps: int = 4

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--agp-steps {self.steps} must be >= 1")


@dataclass(frozen=True)
class Soft(Schedule):
    """``--schedule soft``: Soft Filter Pruning; zeroed channels stay trainable until the end (needs --epochs)."""


@dataclass
class Outcome:
    model: object
    plans: list  # Plan objects applied in order to the source model
    analysis: object  # graph analysis of the source model (first step)
    fit_cost: dict  # achieved cost of the last step's fit (meta-device measurement)
    accuracy_pruned: dict | None = None  # right after the final removal, before its fine-tuning
    history: list = field(default_factory=list)
    interrupted: bool = False
    best_epoch: int | None = None
    round_to: int = 1
    evidence: dict = field(default_factory=dict)  # what a data-driven allocator computed (scan, search)
    training: dict = field(default_factory=dict)  # the fine-tuning's device, AMP, world size and throughput


@dataclass
class Context:
    loaded: LoadedModel
    config: PlanConfig  # a PruneConfig: its ``schedule`` is the schedule that runs
    finetune: FinetuneConfig
    data: object | None  # data.Loaders
    batches: list | None  # criterion batches
    checkpoints: object | None  # Path
    timings: dict
    progress: object | None = None
    resume: dict | None = None
    on_pruned: object | None = None  # callback(model, plans) once the final structure exists
    placement: Placement = CPU
    world: World = SINGLE
    shards: object | None = None  # this rank's data.Loaders under torchrun (``data`` itself otherwise)
    rebuild: object | None = None  # plans -> the pruned structure (ranks other than 0 under torchrun)

    def eval_loader(self):
        return self.data.test if self.data is not None and self.data.test is not None else (self.data.val if self.data else None)


def _recalibrate_and_measure(ctx: Context, model) -> dict | None:
    if ctx.data is None:
        return None
    recalibrate_bn(model, ctx.data.train, ctx.finetune.bn_batches, ctx.placement)
    return evaluate(model, ctx.eval_loader(), placement=ctx.placement)


def _fit(ctx: Context, model, epochs: int, label: str, resume=None, after_epoch=None, checkpoints=None):
    """Fine-tune ``model`` for ``epochs`` (None without data or epochs); its wall time adds to ``finetune_s``."""
    import time

    if ctx.data is None or epochs == 0:
        return None
    teacher = ctx.loaded.model if ctx.finetune.distill else None
    data = ctx.shards or ctx.data
    t0 = time.perf_counter()
    try:
        return fit(model, data.train, data.val, dataclasses.replace(ctx.finetune, epochs=epochs), checkpoints,
                   teacher=teacher, resume=resume, progress=ctx.progress, label=label, after_epoch=after_epoch,
                   placement=ctx.placement, world=ctx.world)
    finally:
        ctx.timings["finetune_s"] = ctx.timings.get("finetune_s", 0.0) + time.perf_counter() - t0


def _on_cpu(ctx: Context, step):
    """``step(net)`` with ``net`` on the CPU (the graph and the criteria run there), back on the device after."""
    def run(net) -> None:
        to_cpu_(net)
        try:
            step(net)
        finally:
            ctx.placement.move_(net)
    return run


MAX_CHECK_RETRIES = 3


def _plan_and_shrink(ctx: Context):
    """Plan and prune; where the pruned model fails its check against the dense model and the check names the groups
    that fail it on their own (Torch-Pruning misreading a reshape inside them: SKNet's path attention), keep those
    groups intact and plan again (at most :data:`MAX_CHECK_RETRIES` times). The check's entry in report.json lists
    them. If the budget cannot be met without them, the failed check stands (exit 3), saying so."""
    config, kept, first = ctx.config, (), None
    for attempt in range(MAX_CHECK_RETRIES + 1):
        try:
            r = plan_model(ctx.loaded, config, ctx.timings, batches=ctx.batches, data=ctx.data, progress=ctx.progress,
                           placement=ctx.placement)
        except UsageError as refused:
            if first is None:
                raise
            raise MisPruned(f"{first}; keeping those groups intact instead: {refused}", kept) from refused
        checks = r.evidence.setdefault("correctness", [])
        try:
            model = shrink_copy(r.source, r.plan, checks=checks, timeout=config.timeout)
        except MisPruned as failed:
            new = tuple(root for root in failed.roots if root not in kept)
            if not new or attempt == MAX_CHECK_RETRIES:
                raise
            first, kept = first or str(failed), kept + new
            config = dataclasses.replace(config, ignore=config.ignore + new)
            continue
        if kept and checks:
            checks[-1]["kept_intact"] = {
                "layers": list(kept),
                "why": "pruning each of these groups alone failed the check against the dense model (Torch-Pruning "
                       "does not map their channels correctly); they were kept intact and the plan made again"}
        return r, model
    raise AssertionError("unreachable")


@SCHEDULES.register("oneshot", config=OneShot)
def oneshot(ctx: Context) -> Outcome:
    if ctx.resume is not None:
        model, plans = ctx.resume["model_structure"], ctx.resume["plans"]
        outcome = Outcome(model, plans, None, ctx.resume["fit_cost"], ctx.resume.get("accuracy_pruned"),
                          round_to=ctx.resume.get("round_to", 1))
    elif ctx.world.main:  # under torchrun rank 0 decides the plan (and recalibrates) alone, then sends it
        r, model = _plan_and_shrink(ctx)
        outcome = Outcome(model, [r.plan], r.analysis, r.fit.cost, _recalibrate_and_measure(ctx, model),
                          round_to=r.round_to, evidence=r.evidence)
        broadcast(ctx.world, {"plans": [p.to_json() for p in outcome.plans], "fit_cost": outcome.fit_cost,
                              "round_to": outcome.round_to})
    else:  # the structure from rank 0's plan; DistributedDataParallel then copies rank 0's weights and buffers
        sent = broadcast(ctx.world)
        plans = [Plan.from_json(p) for p in sent["plans"]]
        outcome = Outcome(ctx.rebuild(plans), plans, None, sent["fit_cost"], round_to=sent["round_to"])
    if ctx.finetune.from_scratch and ctx.resume is None:  # the control: the architecture alone, trained afresh
        reinitialise_(outcome.model, ctx.finetune.seed)
        outcome.accuracy_pruned = None
    if ctx.on_pruned is not None:
        ctx.on_pruned(outcome)
    result = _fit(ctx, outcome.model, ctx.finetune.epochs, "fine-tune", resume=ctx.resume and ctx.resume.get("state"),
                  checkpoints=ctx.checkpoints)
    if result is not None:
        outcome.history, outcome.interrupted, outcome.best_epoch = result.history, result.interrupted, result.best_epoch
        outcome.training = result.training
    return outcome


def agp_fraction(t: int, steps: int) -> float:
    """Cubic AGP: the fraction of the eventual removal done after step t of ``steps``."""
    return 1.0 - (1.0 - t / steps) ** 3


def agp_counts(channels: int, final: int, step: int, t: int, steps: int) -> int:
    """A group's channel count after step t: the cubic fraction of its removal, rounded to its step."""
    removable = (channels - final) // step
    return channels - step * int(round(removable * agp_fraction(t, steps)))


@SCHEDULES.register("agp", config=Agp)
def agp(ctx: Context) -> Outcome:
    if ctx.resume is not None:
        raise UsageError("--resume works with --schedule oneshot; rerun agp without --resume")
    settings = getattr(ctx.config, "schedule", None)
    steps = (settings if isinstance(settings, Agp) else Agp()).steps
    r = plan_model(ctx.loaded, ctx.config, ctx.timings, batches=ctx.batches, data=ctx.data, progress=ctx.progress,
                   placement=ctx.placement)
    analysis = r.analysis
    final = {g.root: len(g.keep) for g in r.plan.groups}
    epochs = ctx.finetune.epochs
    per_step = [epochs // steps + (1 if i < epochs % steps else 0) for i in range(steps)]
    current, plans, outcome = r.source, [], None
    width = {g.root: g.channels for g in analysis.groups}  # current channels per group
    for t in range(1, steps + 1):
        counts = {g.root: agp_counts(g.channels, final[g.root], g.step, t, steps) for g in analysis.groups}
        changing = [g for g in analysis.groups if counts[g.root] < width[g.root]]
        scores = channel_scores(current.model, current.example_input, [(g.root, width[g.root]) for g in changing],
                                ctx.config.criterion, seed=ctx.config.seed, batches=ctx.batches)
        plan = Plan(tuple(GroupPlan(g.root, width[g.root], select_keep(scores[g.root], counts[g.root], g.channel_groups, g.block))
                          for g in changing), ctx.config.criterion, ctx.config.allocation_name)
        model = shrink_copy(current, plan, checks=r.evidence.setdefault("correctness", []), timeout=ctx.config.timeout)
        plans.append(plan)
        width.update({g.root: counts[g.root] for g in changing})
        accuracy = _recalibrate_and_measure(ctx, model)
        if outcome is None:
            outcome = Outcome(model, plans, analysis, r.fit.cost, accuracy, round_to=r.round_to, evidence=r.evidence)
        outcome.model, outcome.accuracy_pruned = model, accuracy
        last = t == steps
        if last and ctx.on_pruned is not None:
            ctx.on_pruned(outcome)
        result = _fit(ctx, model, per_step[t - 1], f"agp step {t}/{steps}", checkpoints=ctx.checkpoints if last else None)
        if result is not None:
            outcome.history += [{**h, "agp_step": t} for h in result.history]
            outcome.best_epoch, outcome.training = result.best_epoch, result.training
            if result.interrupted:
                if not last:  # an interrupted intermediate step cannot end on the budget
                    raise KeyboardInterrupt
                outcome.interrupted = True
        current = dataclasses.replace(current, model=model)
    return outcome


@SCHEDULES.register("soft", config=Soft)
def soft(ctx: Context) -> Outcome:
    if ctx.resume is not None:
        raise UsageError("--resume works with --schedule oneshot; rerun soft without --resume")
    if ctx.data is None or ctx.finetune.epochs == 0:
        raise UsageError("--schedule soft trains while it prunes: pass --data SPEC and --epochs N (N >= 1)")
    r = plan_model(ctx.loaded, ctx.config, ctx.timings, batches=ctx.batches, data=ctx.data, progress=ctx.progress,
                   placement=ctx.placement)
    analysis = r.analysis
    counts = {g.root: len(g.keep) for g in r.plan.groups}
    by_root = {g.root: g for g in analysis.groups}
    model = copy.deepcopy(r.source.model)
    graph = build_graph(model, ctx.loaded.example_input)

    def current_plan(net) -> Plan:
        scores = channel_scores(net, ctx.loaded.example_input, [(g.root, g.channels) for g in analysis.groups],
                                ctx.config.criterion, seed=ctx.config.seed, batches=ctx.batches)
        return Plan(tuple(GroupPlan(r, by_root[r].channels, select_keep(scores[r], counts[r], by_root[r].channel_groups, by_root[r].block))
                          for r in counts), ctx.config.criterion, ctx.config.allocation_name)

    def zero_lowest(net) -> None:
        zero_channels_(net, ctx.loaded.example_input, current_plan(net).removed(), graph=graph)

    result = _fit(ctx, model, ctx.finetune.epochs, "soft filter pruning", after_epoch=_on_cpu(ctx, zero_lowest))
    final = current_plan(model)
    pruned = shrink_copy(dataclasses.replace(ctx.loaded, model=model), final,
                         checks=r.evidence.setdefault("correctness", []), timeout=ctx.config.timeout)
    accuracy = _recalibrate_and_measure(ctx, pruned)
    outcome = Outcome(pruned, [final], analysis, r.fit.cost, accuracy, round_to=r.round_to, evidence=r.evidence)
    outcome.history, outcome.interrupted, outcome.best_epoch = result.history, result.interrupted, result.best_epoch
    outcome.training = result.training
    if ctx.on_pruned is not None:
        ctx.on_pruned(outcome)
    return outcome


def run_schedule(ctx: Context) -> Outcome:
    """Run the schedule that ``ctx.config.schedule``'s type names (:class:`OneShot` by default)."""
    return SCHEDULES.for_config(getattr(ctx.config, "schedule", None) or OneShot())(ctx)
