"""Channel dependency groups (Torch-Pruning's DepGraph), what cannot be pruned and why, and the reachable range.

A *group* is a set of channels that must be removed together: a conv's output channels plus the
BatchNorm after it, the inputs of every consumer, and - through residual adds and concatenations -
the channels of other layers tied to them. Each group is named by its *root*: the first conv or
linear layer whose output channels it covers.

The reachable range is measured, not estimated: a copy of the model is physically pruned with
every group at its minimum (``min_channels``, rounded up to ``round_to`` and to the channel
groups of grouped convs) and counted with FlopCounterMode.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import asdict, dataclass, field

from prunecli.core.errors import RuntimeFailure, UsageError
from prunecli.graph import attention, tracing
from prunecli.graph.cost import count_flops, count_params, module_flops
from prunecli.graph.plans import shape_removal
from prunecli.graph.shrink import build_graph, remove_channels_


@dataclass(frozen=True)
class GroupInfo:
    """One prunable channel group."""

    root: str  # name of the conv/linear whose output channels root the group
    channels: int  # channels in the group (the root's output channels)
    layers: tuple[str, ...]  # every module the group touches
    flops_share: float  # share of model FLOPs in the layers it touches (a layer between two groups counts for both)
    params_share: float  # share of model params in the layers it touches
    step: int  # kept counts are multiples of this (round_to and grouped-conv channel groups)
    min_keep: int  # fewest channels the group may keep under the current constraints
    channel_groups: int = 1  # grouped convs, attention heads: every conv group / head keeps the same positions
    block: int = 1  # --prune-heads: channels go in whole blocks of this many (a head's width)

    def to_json(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data


def removable_steps(group: GroupInfo, floor: int | None = None) -> int:
    """How many whole steps a group can lose before reaching its floor (min_keep by default)."""
    floor = group.min_keep if floor is None else max(floor, group.min_keep)
    if group.channels % group.step or floor >= group.channels:
        return 0
    return (group.channels - floor) // group.step


@dataclass(frozen=True)
class NotPrunable:
    layer: str
    reason: str


@dataclass
class GraphAnalysis:
    groups: list[GroupInfo]
    not_prunable: list[NotPrunable]
    flops: int
    params: int
    min_flops: int
    min_params: int
    ignored: tuple[str, ...] = field(default_factory=tuple)

    @property
    def min_flops_ratio(self) -> float:
        return self.min_flops / self.flops if self.flops else 1.0

    @property
    def min_params_ratio(self) -> float:
        return self.min_params / self.params if self.params else 1.0

    def group(self, root: str) -> GroupInfo:
        return next(g for g in self.groups if g.root == root)


def _prunable_types():
    import torch

    return (torch.nn.modules.conv._ConvNd, torch.nn.Linear)


def output_layers(model, graph) -> set:
    """Conv/linear layers whose outputs reach the model's outputs without passing another such layer."""
    roots = _prunable_types()
    found, seen = set(), set()
    frontier = [node for node in graph.module2node.values() if not node.outputs]
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, roots):
            found.add(node.module)
            continue
        frontier.extend(node.inputs)
    return found


class Unalignable(Exception):
    """A group whose channels cannot be cut into whole conv groups of a grouped convolution it touches."""


def _channel_step(graph, group, round_to: int, names: dict) -> tuple[int, int]:
    """(step, channel groups): kept counts are multiples of ``step``; removed positions repeat in every one of
    ``channel groups`` equal blocks, the least common multiple of every grouped conv's group count, so that each
    grouped conv the group touches keeps equal groups. Raises :class:`Unalignable` when the group covers only
    part of a grouped conv's channels (a branch of a concatenation feeding it) or does not divide into its groups:
    removing channels there would leave the conv's groups unequal."""
    import torch

    ch_groups = 1
    channels = len(group[0].idxs)
    for dep, idxs in group:
        module = dep.target.module
        if isinstance(module, torch.nn.modules.conv._ConvNd) and module.groups == module.out_channels:
            continue  # depthwise: pruned with its input, no per-group constraint
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        groups = int((pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module)) or 1)
        if groups > 1:
            width = int(getattr(module, "out_channels" if out else "in_channels", channels))
            if len(idxs) != width or channels % groups:
                raise Unalignable(f"its {channels} channels cover {len(idxs)} of the {width} "
                                  f"{'output' if out else 'input'} channels of grouped conv {names.get(module, '?')} "
                                  f"({groups} groups), so removing any would leave its groups unequal")
        ch_groups = math.lcm(ch_groups, groups, attention.member_channel_groups(module))
    return math.lcm(max(1, round_to), ch_groups), ch_groups


def _alias_period(graph, module, channels: int) -> int | None:
    """When Torch-Pruning's closure makes a root channel bring others of the same layer (a concatenation of a layer
    and a per-channel function of it, as GhostNet's ``cat([x, depthwise(x)])``; a fused qkv projection), the group's
    channels are the first ``period`` of them, each standing for every channel ``period`` apart. None otherwise (or
    when the repeat is not that simple)."""
    pruner = graph.get_pruner_of_module(module)
    try:
        first = graph.get_pruning_group(module, pruner.prune_out_channels, [0])
    except Exception:  # a runaway or Torch-Pruning failure: the group is planned over its own channels
        return None
    same = sorted({int(i) for dep, idxs in first if dep.target.module is module
                   and graph.is_out_channel_pruning_fn(dep.handler) for i in idxs})
    if len(same) < 2:
        return None
    period = same[1] - same[0]
    if period < 1 or channels % period or same != list(range(0, channels, period)):
        return None
    return period


def root_widths(model, roots) -> dict[str, int | None]:
    """Output widths of the layers rooting ``roots`` as the model is now (None for a root that is not a conv or
    linear layer). A group channel may stand for several of its root's (a fused qkv projection's q, k and v rows;
    GhostNet's channel and its copy): the width is then a multiple of the group's channels."""
    modules = dict(model.named_modules())
    widths = {}
    for root in roots:
        module = modules.get(root)
        width = getattr(module, "out_channels", getattr(module, "out_features", None))
        widths[root] = int(width) if width is not None else None
    return widths


def min_keep_for(channels: int, step: int, min_channels: int) -> int:
    """Fewest channels a group may keep: at least ``min_channels``, a multiple of ``step``, at most all."""
    if channels % step:
        return channels  # the group cannot be cut into whole steps: it stays intact
    keep = max(step, math.ceil(max(1, min_channels) / step) * step)
    return min(channels, keep)


def analyse(
    model,
    example_input,
    *,
    ignore: tuple[str, ...] = (),
    round_to: int = 1,
    min_channels: int = 1,
    keep_head: bool = True,
    measure_range: bool = True,
    prune_heads: bool = False,
) -> GraphAnalysis:
    """Groups, unprunable layers and (with ``measure_range``) the smallest reachable FLOPs/params.

    A group rooted at an attention layer's fused qkv projection has one channel per q/k/v triple; it loses the
    same positions in every head, or with ``prune_heads`` whole heads (:mod:`prunecli.graph.attention`)."""
    import torch

    names = {m: n for n, m in model.named_modules()}
    found_heads = attention.find(model)
    qkv_heads = attention.by_qkv(found_heads)
    if prune_heads and not qkv_heads:
        raise UsageError("--prune-heads: " + (
            "this model's attention is nn.MultiheadAttention, whose heads are slices of the embedding and are not "
            "removed separately; drop --prune-heads (every head then loses the same dimensions)" if found_heads else
            "the model has no attention layer prunecli knows (timm's Attention); drop --prune-heads"))
    graph = build_graph(model, example_input)
    total_flops = count_flops(model, example_input)
    total_params = count_params(model)
    per_module_flops = module_flops(model, example_input)

    reasons: dict[str, str] = {}
    ignored_modules = []
    if keep_head:
        for module in output_layers(model, graph):
            reasons[names[module]] = "classifier head: its outputs are the model's outputs"
            ignored_modules.append(module)
    for name, module in model.named_modules():
        for pattern in ignore:
            if name and fnmatch.fnmatchcase(name, pattern) and isinstance(module, _prunable_types()):
                reasons.setdefault(name, f"kept intact by --ignore/preset pattern {pattern!r}")
                ignored_modules.append(module)

    groups: list[GroupInfo] = []
    covered: set[str] = set()
    shuffled_then_split = tracing.shuffle_split_nodes(graph)
    def runaway(module, why: str) -> None:
        reasons[names[module]] = f"Torch-Pruning cannot group its channels: {why}"

    raw_groups = list(tracing.all_groups(graph, ignored_modules, _prunable_types(), runaway))
    for group in raw_groups:
        root_module = group[0].dep.target.module
        if any(dep.target in shuffled_then_split for dep, _ in group):
            reasons[names[root_module]] = ("its channels pass a channel shuffle that is then split into chunks, which "
                                           "must stay equal at every block of the stage; kept intact")
            continue
        channels, block = len(group[0].idxs), 1
        channels = _alias_period(graph, root_module, channels) or channels
        try:
            step, ch_groups = _channel_step(graph, group, round_to, names)
        except Unalignable as why:
            reasons[names[root_module]] = str(why)
            continue
        heads = qkv_heads.get(names[root_module])
        if heads is not None:
            layout = attention.qkv_layout(heads, prune_heads)
            if isinstance(layout, str):
                reasons[names[root_module]] = layout
                continue
            channels, head_groups, block = layout
            if block > 1:  # whole heads: round_to does not apply to a head count
                step, ch_groups = block, 1
            else:
                step, ch_groups = math.lcm(step, head_groups), math.lcm(ch_groups, head_groups)
        touched = []
        for dep, _ in group:
            module = dep.target.module
            if isinstance(module, torch.nn.Module) and module in names and names[module] not in touched:
                touched.append(names[module])
                if graph.is_out_channel_pruning_fn(dep.handler):
                    covered.add(names[module])
        flops_touched = sum(per_module_flops.get(n, 0) for n in touched)
        params_touched = sum(
            p.numel() for n in touched for p in dict(model.named_modules())[n].parameters(recurse=False)
        )
        groups.append(
            GroupInfo(
                root=names[root_module],
                channels=channels,
                layers=tuple(touched),
                flops_share=flops_touched / total_flops if total_flops else 0.0,
                params_share=params_touched / total_params if total_params else 0.0,
                step=step,
                min_keep=min_keep_for(channels, step, min_channels),
                channel_groups=ch_groups,
                block=block,
            )
        )

    order = {n: i for i, n in enumerate(names.values())}
    groups.sort(key=lambda g: order[g.root])
    for name, module in model.named_modules():
        if isinstance(module, _prunable_types()) and name not in covered and name not in reasons:
            if module not in graph.module2node:
                reasons[name] = "not used in the traced forward pass"
            else:
                reasons[name] = "its channels are tied to a layer kept intact (head or --ignore)"

    analysis = GraphAnalysis(
        groups=groups,
        not_prunable=[NotPrunable(layer=n, reason=r) for n, r in sorted(reasons.items())],
        flops=total_flops,
        params=total_params,
        min_flops=total_flops,
        min_params=total_params,
        ignored=tuple(sorted(names[m] for m in ignored_modules)),
    )
    if measure_range and groups:
        _measure_min_(model, example_input, analysis)
    return analysis


def _keep_first(groups: list[GroupInfo]) -> dict[str, list[int]]:
    return shape_removal(groups, {g.root: g.min_keep for g in groups})


def _try_prune(model, example_input, remove) -> tuple[object | None, str | None]:
    """Prune a shape-only (meta-device) copy; (pruned copy, None) or (None, why it broke)."""
    import torch

    meta_x = example_input.to("meta")
    trial = copy.deepcopy(model).to("meta")
    try:
        with torch.no_grad():
            out_before = trial(meta_x)
        remove_channels_(trial, meta_x, remove)
        with torch.no_grad():
            out_after = trial(meta_x)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    if getattr(out_before, "shape", None) != getattr(out_after, "shape", None):
        return None, "pruning it changes the model's output shape"
    return trial, None


def _measure_min_(model, example_input, analysis: GraphAnalysis) -> None:
    """Prune a copy with every group at its minimum; groups that break the forward pass become unprunable."""
    remove = _keep_first(analysis.groups)
    pruned, error = _try_prune(model, example_input, remove)
    if pruned is None:
        broken = []
        for group in analysis.groups:
            single = _keep_first([group])
            if single and _try_prune(model, example_input, single)[0] is None:
                broken.append(group)
        for group in broken:
            reason = _try_prune(model, example_input, _keep_first([group]))[1]
            analysis.not_prunable.append(NotPrunable(group.root, f"pruning its group breaks the model ({reason})"))
        analysis.groups = [g for g in analysis.groups if g not in broken]
        pruned, error = _try_prune(model, example_input, _keep_first(analysis.groups))
        if pruned is None:
            raise RuntimeFailure(f"pruning {type(model).__name__} breaks its forward pass: {error}")
    analysis.min_flops = count_flops(pruned, example_input.to("meta"))
    analysis.min_params = count_params(pruned)


def channel_roles(model, example_input, groups, graph=None) -> dict[str, dict[str, str]]:
    """Which group's channels each module's output ("out") and input ("in") side carries.

    ``{module_name: {"out": root, "in": {root: channels}}}`` (a side absent when no group controls it;
    a consumer of a concatenation has several input groups). A depthwise conv is an "out" member of its
    group. Norm layers are "out" members of their group.
    """
    graph = graph if graph is not None else build_graph(model, example_input)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    roles: dict[str, dict[str, str]] = {}
    for g in groups:
        module = modules[g.root]
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(g.channels)))
        for dep, idxs in group:
            target = dep.target.module
            if target not in names:
                continue
            role = roles.setdefault(names[target], {})
            if graph.is_out_channel_pruning_fn(dep.handler):
                role["out"] = g.root
            else:  # a consumer: a concatenation feeds it from several groups
                role.setdefault("in", {})[g.root] = len(set(int(i) for i in idxs))
    return roles
