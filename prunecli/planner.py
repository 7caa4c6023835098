"""The plan stage: graph -> channel scores -> allocation -> exact budget fit -> which channels go.

:func:`plan_model` decides; :func:`shrink_copy` applies a plan to a copy. Data-driven allocators declare what
they need (``needs``) and their own frozen settings (``settings``) where they are registered; this module
provides the evidence and checks the settings, so allocators stay pure. Schedules (:mod:`prunecli.schedule`)
and the pipeline (:mod:`prunecli.prune`) call this stage; it imports neither.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

from . import allocate
from .budget import CostOracle, fit_budget
from .config import PruneConfig
from .criteria import CRITERIA, channel_scores
from .errors import RuntimeFailure, UsageError
from .inspect import prunable_groups
from .load import LoadedModel
from .plan import GroupPlan, Plan, select_keep
from .shrink import remove_channels_


def settings_for(entry, given, flag: str):
    """The frozen settings an allocator or schedule declared (``settings=`` at registration): ``given`` if it is
    one, its defaults when None; anything else is a programming error named here."""
    kind = getattr(entry, "settings", None)
    if kind is None:
        if given is not None:
            raise UsageError(f"{flag} takes no settings, got {type(given).__name__}")
        return None
    if given is None:
        return kind()
    if not isinstance(given, kind):
        raise UsageError(f"{flag} settings must be {kind.__name__}, got {type(given).__name__}")
    return given


def allocation_settings(config: PruneConfig):
    """The allocator's settings, with --criterion and --seed filled in where they take part (scan, search)."""
    settings = settings_for(allocate.ALLOCATORS.get(config.allocation), config.allocation_settings,
                            f"--allocation {config.allocation}")
    if settings is None:
        return None
    fields = {f.name for f in dataclasses.fields(settings)}
    shared = {k: v for k, v in (("criterion", config.criterion), ("seed", config.seed)) if k in fields}
    try:
        return dataclasses.replace(settings, **shared)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _evidence(allocator, loaded: LoadedModel, config: PruneConfig, analysis, data, batches, progress, timings) -> dict:
    """What a data-driven allocator declared it needs (``needs``), computed here so allocators stay pure."""
    needs = getattr(allocator, "needs", None)
    if needs is None:
        return {}
    if data is None:
        raise UsageError(f"--allocation {config.allocation} evaluates the model: pass --data SPEC (e.g. --data digits)")
    if needs == "sensitivity":
        from .sensitivity import cached_scan

        scan = cached_scan(loaded.model, loaded.example_input, analysis.groups, data.val, allocation_settings(config),
                           criterion_batches=batches, progress=progress)
        timings["sensitivity"] = {"scan_s": scan.wall_s, "cached": scan.cached, "key": scan.key}
        return {"sensitivity": scan}
    if needs == "search":
        from .allocate.learned import search

        metric = "flops" if config.flops is not None else "params"
        budget = config.flops if config.flops is not None else config.params
        target = budget.resolve(analysis.flops if metric == "flops" else analysis.params)
        search_config = allocation_settings(config)
        result = search(loaded.model, loaded.example_input, analysis.groups, data.train, metric, target, search_config,
                        progress=progress)
        timings["search_allocation_s"] = result.wall_s
        wanted = {g.root: result.alpha[g.root] * g.channels for g in analysis.groups}  # the fit's last gap follows these
        if search_config.weights == "dense":
            # a control (benchmarks/quality.py): the learned counts applied to the input's weights, channels chosen by
            # --criterion, so that the allocation is judged apart from the search's training
            return {"search": result, "prefer": wanted}
        return {"search": result, "scores": result.scores, "source_model": result.model, "prefer": wanted}
    raise RuntimeFailure(f"allocator {config.allocation!r} needs {needs!r}, which prunecli does not provide")


def check_budgets(config: PruneConfig, dense: dict) -> dict:
    """The targets as counts; a target at or above the dense model leaves nothing to prune (exit 2)."""
    targets = {}
    for budget in config.budgets():
        target = budget.resolve(dense[budget.metric])
        if target >= dense[budget.metric]:
            raise UsageError(f"--{budget.metric} {budget.describe()} is at or above the dense model "
                             f"({dense[budget.metric]:,} {budget.metric}): nothing to prune; give a fraction below 1 "
                             "or a smaller count (`prunecli export` writes the dense model as it is)")
        targets[budget.metric] = target
    return targets


def dense_flops_params(loaded: LoadedModel) -> dict:
    """FLOPs and params of the dense model (no MACs: cheap enough to run before any other work)."""
    from .cost import count_flops, count_params

    return {"flops": count_flops(loaded.model, loaded.example_input), "params": count_params(loaded.model)}


@dataclass
class PlanResult:
    """What `plan_model` decided. ``source`` is the model the plan applies to: the input, or for
    allocators that train while they search (learned) the searched copy of it."""

    plan: Plan
    analysis: object
    fit: object  # budget.Fit
    dense: dict
    targets: dict
    round_to: int
    source: LoadedModel
    evidence: dict


def plan_model(loaded: LoadedModel, config: PruneConfig, timings: dict, batches=None, data=None, progress=None):
    """Decide which channels go (a PlanResult). Never changes ``loaded``.

    ``data`` (Loaders) is needed by data-driven allocators (sensitivity); ``batches`` by data-driven criteria.
    """
    CRITERIA.get(config.criterion)  # unknown names fail before any work
    allocator = allocate.ALLOCATORS.get(config.allocation)
    t0 = time.perf_counter()
    analysis, round_to = prunable_groups(loaded, ignore=config.ignore, round_to=config.round_to,
                                         min_channels=config.min_channels)
    if not analysis.groups:
        if config.ignore:
            raise UsageError(f"--ignore {' --ignore '.join(config.ignore)} leaves no prunable channel group in "
                             f"{loaded.display_name}; keep fewer layers intact (see `prunecli inspect`)")
        raise UsageError(f"MODEL {loaded.display_name} has no prunable channel groups (see `prunecli inspect`)")
    dense = {"flops": analysis.flops, "params": analysis.params}
    targets = check_budgets(config, dense)
    timings["graph_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    notes: list[str] = []
    scores = channel_scores(loaded.model, loaded.example_input, [(g.root, g.channels) for g in analysis.groups],
                            config.criterion, seed=config.seed, batches=batches, notes=notes)
    timings["score_s"] = time.perf_counter() - t0
    evidence = _evidence(allocator, loaded, config, analysis, data, batches, progress, timings)
    if notes:
        evidence["criterion_fallbacks"] = notes
    order = allocator(analysis.groups, scores, config, evidence)
    scores = evidence.get("scores", scores)  # learned: keep the channels its search ranked highest

    t0 = time.perf_counter()
    hint = (f"with --round-to {round_to} and --min-channels {config.min_channels}"
            + (f" and --max-group-prune {config.max_group_prune}" if config.allocation == "global" else "")
            + "; lower those (or drop --ignore patterns) to reach further")
    oracle = CostOracle(loaded.model, loaded.example_input, analysis.groups)
    fit = fit_budget(analysis.groups, order, targets, oracle, dense, tolerance=config.tolerance, hint=hint,
                     prefer=evidence.get("prefer"))
    timings["search_s"] = time.perf_counter() - t0

    plan = Plan(
        groups=tuple(
            GroupPlan(g.root, g.channels, select_keep(scores[g.root], fit.counts[g.root], g.channel_groups))
            for g in analysis.groups
        ),
        criterion=config.criterion if "scores" not in evidence else f"{config.criterion} (search: bn|l1 on searched weights)",
        allocation=config.allocation,
    )
    source = loaded if "source_model" not in evidence else dataclasses.replace(loaded, model=evidence["source_model"])
    return PlanResult(plan, analysis, fit, dense, targets, round_to, source, evidence)


def shrink_copy(loaded: LoadedModel, plan: Plan):
    """A physically pruned copy; the loaded model is left as it was."""
    import torch

    pruned = copy.deepcopy(loaded.model)
    remove_channels_(pruned, loaded.example_input, plan.removed())
    pruned.eval()
    with torch.no_grad():
        before = loaded.model(loaded.example_input)
        after = pruned(loaded.example_input)
    if tuple(before.shape) != tuple(after.shape):
        raise RuntimeFailure(f"pruning changed the output shape {tuple(before.shape)} -> {tuple(after.shape)}")
    return pruned
