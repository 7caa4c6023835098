"""Sensitivity analysis: what pruning each channel group alone costs, level by level.

For every prunable group and every level (the fraction of its channels removed, rounded to the
group's step and never below its floor), the group's lowest-ranked channels (``criterion`` on the
model's current weights) are removed from that group only and the model is evaluated, without
fine-tuning or BatchNorm recalibration, on a fixed subset of the validation split: its first
``batches`` batches. The dense metric is computed once, and a channel count that several levels
round to is evaluated once.

Removal is simulated by zeroing the group's channels in every member (conv/linear weights and
biases, norm scale and shift). For convs followed by BatchNorm or no norm this gives exactly the
outputs of the physically pruned model (tested) and needs a single dependency graph; a group with a
GroupNorm or LayerNorm member (whose statistics would change) is pruned physically on a copy
instead. FLOPs and params saved are measured on a meta-device copy (:class:`prunecli.plan.budget.CostOracle`).

A scan is cached in the user cache directory, keyed on the model's structure and weights, the
content of the evaluation batches and the settings, so `prune --allocation sensitivity` reuses the
scan that `prunecli sensitivity` made (or makes it once).
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field

from prunecli.core.cache import cache_dir, read_json, write_json
from prunecli.plan.allocators.sensitivity.allocator import Sensitivity

CACHE_VERSION = 1


@dataclass(frozen=True)
class Point:
    level: float  # requested fraction of the group's channels removed
    removed: int  # channels actually removed (level rounded to the group's step, capped by its floor)
    value: float  # metric with only this group pruned
    degradation: float  # worse-than-dense amount: dense top1 - top1, or loss - dense loss
    flops_saved: int
    params_saved: int


@dataclass
class Curve:
    root: str
    channels: int
    step: int
    flops_share: float
    exact: bool  # zeroing equals removal for this group (no GroupNorm/LayerNorm member)
    points: list[Point]

    @property
    def score(self) -> float:
        """Mean degradation over the levels: the area under the curve, the ranking key."""
        return sum(p.degradation for p in self.points) / len(self.points) if self.points else 0.0


@dataclass
class Scan:
    metric: str
    dense_value: float
    dense_flops: int
    dense_params: int
    samples: int
    curves: list[Curve]
    settings: dict
    key: str
    wall_s: float
    cached: bool = False
    extra: dict = field(default_factory=dict)

    def ranked(self) -> list[Curve]:
        return sorted(self.curves, key=lambda c: -c.score)

    def curve(self, root: str) -> Curve:
        return next(c for c in self.curves if c.root == root)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc.pop("cached")
        doc["version"] = CACHE_VERSION
        return doc

    @staticmethod
    def from_json(doc: dict, cached: bool = False) -> "Scan":
        curves = [Curve(**{**c, "points": [Point(**p) for p in c["points"]]}) for c in doc["curves"]]
        fields = {k: v for k, v in doc.items() if k not in ("curves", "version")}
        return Scan(**{**fields, "curves": curves, "cached": cached})

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["group", "channels", "level", "removed", "metric", self.metric, "degradation",
                         "flops_saved", "flops_saved_ratio", "params_saved"])
        for c in self.curves:
            writer.writerow([c.root, c.channels, 0.0, 0, self.metric, f"{self.dense_value:.6g}", 0.0, 0, 0.0, 0])
            for p in c.points:
                writer.writerow([c.root, c.channels, p.level, p.removed, self.metric, f"{p.value:.6g}",
                                 f"{p.degradation:.6g}", p.flops_saved, f"{p.flops_saved / self.dense_flops:.6g}",
                                 p.params_saved])
        return buffer.getvalue()


def _metric(result: dict, metric: str) -> float:
    return float(result["top1"] if metric == "top1" else result["loss"])


def _degradation(value: float, dense: float, metric: str) -> float:
    return dense - value if metric == "top1" else value - dense


def _hash_tensor(h, tensor) -> None:
    import torch

    t = tensor.detach().cpu().contiguous()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def scan_key(model, eval_batches, groups, config: Sensitivity) -> str:
    """Content hash of everything the scan depends on: structure, weights, evaluation data, settings."""
    h = hashlib.sha256(f"prunecli-sensitivity-v{CACHE_VERSION}".encode())
    h.update(repr(model).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        _hash_tensor(h, tensor)
    for x, y in eval_batches:
        _hash_tensor(h, x)
        _hash_tensor(h, y)
    h.update(json.dumps({"groups": [[g.root, g.channels, g.step, g.min_keep] for g in groups],
                         **asdict(config)}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def removed_counts(group, levels) -> list[int]:
    """Channels removed at each level: rounded to the group's step, at most down to its floor."""
    from prunecli.graph.groups import removable_steps

    most = removable_steps(group) * group.step
    return [min(most, int(round(level * group.channels / group.step)) * group.step) for level in levels]


def _zeroing_is_exact(model, group) -> bool:
    import torch

    modules = dict(model.named_modules())
    return not any(isinstance(modules.get(name), (torch.nn.GroupNorm, torch.nn.LayerNorm)) for name in group.layers)


def run_scan(model, example_input, groups, eval_batches, config: Sensitivity, *, criterion_batches=None,
             progress=None, key: str = "", placement=None) -> Scan:
    """Scan ``groups`` of ``model`` (left unchanged) on ``eval_batches`` (a list of (x, y))."""
    import torch

    from prunecli.core.device import CPU
    from prunecli.graph.plans import select_keep
    from prunecli.plan.budget import CostOracle
    from prunecli.plan.criteria import channel_scores
    from prunecli.train.finetune import evaluate as evaluate_on

    evaluate = functools.partial(evaluate_on, placement=placement or CPU)
    from prunecli.graph.shrink import build_graph, remove_channels_, zero_channels_

    started = time.perf_counter()
    groups = [g for g in groups if removed_counts(g, config.levels)[-1] > 0]
    work = copy.deepcopy(model).eval()
    original = {k: v.clone() for k, v in work.state_dict().items()}
    graph = build_graph(work, example_input)
    oracle = CostOracle(model, example_input, groups)
    dense_cost = oracle({})
    scores = channel_scores(model, example_input, [(g.root, g.channels) for g in groups], config.criterion,
                            seed=config.seed, batches=criterion_batches)
    dense = _metric(evaluate(work, eval_batches), config.metric)
    samples = sum(int(y.numel()) for _, y in eval_batches)
    todo = sum(len(set(removed_counts(g, config.levels)) - {0}) for g in groups)
    task = progress.add_task("sensitivity scan", total=todo, info="") if progress is not None else None
    curves = []
    for group in groups:
        exact = _zeroing_is_exact(work, group)
        measured: dict[int, tuple[float, dict]] = {0: (dense, dense_cost)}
        points = []
        for level, removed in zip(config.levels, removed_counts(group, config.levels)):
            if removed not in measured:
                keep = set(select_keep(scores[group.root], group.channels - removed, group.channel_groups, group.block))
                drop = {group.root: [i for i in range(group.channels) if i not in keep]}
                if exact:
                    zero_channels_(work, example_input, drop, graph=graph)
                    value = _metric(evaluate(work, eval_batches), config.metric)
                    with torch.no_grad():
                        work.load_state_dict(original)
                else:
                    pruned = copy.deepcopy(model).eval()
                    remove_channels_(pruned, example_input, drop)
                    value = _metric(evaluate(pruned, eval_batches), config.metric)
                counts = {group.root: group.channels - removed}
                measured[removed] = (value, oracle(counts))
                if task is not None:
                    progress.update(task, advance=1, info=group.root)
            value, cost = measured[removed]
            points.append(Point(level, removed, value, _degradation(value, dense, config.metric),
                                dense_cost["flops"] - cost["flops"], dense_cost["params"] - cost["params"]))
        curves.append(Curve(group.root, group.channels, group.step, group.flops_share, exact, points))
    return Scan(config.metric, dense, dense_cost["flops"], dense_cost["params"], samples, curves,
                asdict(config), key, time.perf_counter() - started)


def cached_scan(model, example_input, groups, val_loader, config: Sensitivity, *, criterion_batches=None,
                progress=None, use_cache: bool = True, placement=None) -> Scan:
    """The scan of ``model`` on the first ``config.batches`` batches of ``val_loader``, from the cache when there."""
    eval_batches = [batch for _, batch in zip(range(config.batches), val_loader)]
    key = scan_key(model, eval_batches, groups, config)
    path = cache_dir() / "sensitivity" / f"{key}.json"
    if use_cache:
        doc = read_json(path)
        if doc is not None and doc.get("version") == CACHE_VERSION:
            return Scan.from_json(doc, cached=True)
    scan = run_scan(model, example_input, groups, eval_batches, config, criterion_batches=criterion_batches,
                    progress=progress, key=key, placement=placement)
    write_json(path, scan.to_json())
    return scan
