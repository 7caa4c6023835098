"""Torch-Pruning's dependency graph, mended where it fails on real architectures (installed once per process by
:func:`install`, which :func:`prunecli.graph.shrink.build_graph` calls):

* **channel shuffle** - an index mapping through ``view -> transpose -> view`` (below);
* **chunks** - sized from autograd, not inferred from their consumers (:func:`_fix_chunks`); and a split's offsets
  follow its sizes as earlier groups shrink them (Torch-Pruning's SplitPruner stores them on itself: MixNet's
  second group cut the wrong piece);
* **concatenations it cannot size** - left unmapped, as Torch-Pruning intends, instead of a TypeError (it sums the
  sizes before checking that it inferred them; Swin's patch merging);
* **runaway index mappings** - Torch-Pruning maps a flatten by multiplying every index by the flattened size; on
  models whose reshapes it misreads (Swin's window partitions) the index lists multiply through the graph until
  the machine runs out of memory. A mapping that would produce more than :data:`MAX_MAPPED` indices stops the
  trace with :class:`MappingRunaway`, which the graph stage reports as one line (exit 4) instead of hanging;
* **a closure that revisits layers** - each (layer, handler, index) is followed once (:func:`_closure`);
* **a failure inside Torch-Pruning on one root** (a division by zero in a mapping it misapplies) - only that
  group is kept intact, with the reason (:func:`all_groups`);

Channel shuffle
---------------

ShuffleNet's ``channel_shuffle(x, g)`` views ``(n, C, h, w)`` as ``(n, g, C/g, h, w)``, swaps the two channel axes
and flattens back: input channel ``a * C/g + b`` (group ``a``, position ``b``) becomes output channel ``b * g + a``.
Torch-Pruning 1.6 treats the two views as a flatten and fails (a division by zero in its reshape mapping), so
ShuffleNetV2 cannot be traced. :func:`install` gives its graph the real mapping, and one more fact: the pruned
model's shuffle re-derives ``C/g`` from its input, so it stays the same permutation only if every one of the ``g``
input groups loses the *same* positions. The mapping therefore ties them: removing input channel ``(a, b)`` removes
``(a', b)`` for every group ``a'`` - and Torch-Pruning's group closure then couples the layers that feed the
different groups (in ShuffleNetV2, the two branches before the concatenation).

What the mapping cannot express: when a shuffled tensor is then split in equal chunks (ShuffleNetV2's next block
does ``x.chunk(2, dim=1)``), the pruned chunks stay the dense chunks only if every chunk loses as many channels, at
every block of the stage - a constraint over the whole stage's channel stream. Groups whose channels pass a shuffle
that feeds a split are therefore kept intact (:func:`shuffle_split_nodes`; `prunecli inspect` says why); the layers
inside each branch are pruned as usual.
"""

from __future__ import annotations

_VIEWS = ("ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "_ReshapeAliasBackward0")
_PASS = ("CloneBackward0",)  # .contiguous() between the transpose and the second view


def _sizes(node):
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    return tuple(int(s) for s in sizes) if sizes is not None else None


def _kind(node) -> str:
    return type(node.grad_fn).__name__


def _shuffle_at(node):
    """(channels, groups) when ``node`` is the second view of a channel shuffle (its input is the transposed
    ``(n, C/g, g, h, w)`` tensor, which came from viewing an ``(n, C, h, w)`` tensor as ``(n, g, C/g, h, w)``)."""
    if _kind(node) not in _VIEWS:
        return None
    after = _sizes(node)
    if after is None or len(after) != 5 or len(node.inputs) != 1:
        return None
    transpose = _transpose_before(node)
    if _kind(transpose) != "TransposeBackward0" or len(transpose.inputs) != 1:
        return None
    dims = {getattr(transpose.grad_fn, "_saved_dim0", None), getattr(transpose.grad_fn, "_saved_dim1", None)}
    first = transpose.inputs[0]
    before = _sizes(first)
    if dims != {1, 2} or _kind(first) not in _VIEWS or before is None or len(before) != 4:
        return None
    channels, groups = before[1], after[2]
    if after[1] * groups != channels or groups < 2:
        return None
    return channels, groups


class _ShuffleIndexMapping:
    """Indices across a channel shuffle of ``channels`` in ``groups``: forward (input -> output) or reverse, each
    index tied to the same position in every group (see the module docstring). ``stop``: no indices cross it (a
    shuffle that feeds a split, whose groups are kept intact: following the stage's cycles of chunks and shuffles,
    Torch-Pruning's closure would meet ever new index sets and not end)."""

    def __init__(self, channels: int, groups: int, reverse: bool, stop: bool = False) -> None:
        self.channels, self.groups, self.reverse, self.stop = channels, groups, reverse, stop

    def __call__(self, idxs):
        from torch_pruning._helpers import _HybridIndex

        if self.stop:
            return []
        per_group, groups = self.channels // self.groups, self.groups
        mapped = []
        for i in idxs:
            if self.reverse:  # output channel b * g + a  ->  input channels a' * C/g + b
                position = i.idx // groups
                targets = [a * per_group + position for a in range(groups)]
            else:  # input channel a * C/g + b  ->  output channels b * g + a'
                position = i.idx % per_group
                targets = [position * groups + a for a in range(groups)]
            mapped.extend(_HybridIndex(idx=t, root_idx=i.root_idx) for t in targets)
        # sorted and unique: the closure stops revisiting a layer only when it meets the same index list again
        return sorted(set(mapped), key=lambda i: (i.idx, -1 if i.root_idx is None else i.root_idx))


def _feeds_split(node) -> bool:
    return any("Split" in _kind(out) for out in node.outputs)


def _map_shuffle(node, channels: int, groups: int) -> None:
    stop = _feeds_split(node)
    for consumer in node.outputs:
        for dep in node.dependencies:
            if dep.target is consumer:
                dep.index_mapping[0] = _ShuffleIndexMapping(channels, groups, reverse=False, stop=stop)
        for dep in consumer.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _ShuffleIndexMapping(channels, groups, reverse=True, stop=stop)


def _transpose_before(node):
    """The node feeding ``node``, past copies (``.contiguous()``)."""
    before = node.inputs[0]
    while _kind(before) in _PASS and len(before.inputs) == 1:
        before = before.inputs[0]
    return before


def _first_view(node):
    return _transpose_before(node).inputs[0]


def _fix_chunks(split_node) -> None:
    """Torch-Pruning 1.6 sizes a ``chunk``'s pieces by inferring its consumers' channels, which is wrong when a piece
    goes straight into a concatenation (ShuffleNetV2's ``x1``: it counts the concatenation's 2x), and it assumes a
    split's consumers come in piece order (they come in trace order: the second piece's consumer can be first). Set
    the sizes from what autograd saved, and the consumers in the order of the pieces they use."""
    grad_fn = split_node.grad_fn
    size, dim = getattr(grad_fn, "_saved_split_size", None), getattr(grad_fn, "_saved_dim", None)
    listed = getattr(grad_fn, "_saved_split_sizes", None)  # torch.split(x, [a, b], 1)
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if dim != 1 or sizes is None:
        return
    if listed is not None:
        pieces = [int(p) for p in listed]
    elif size is not None and int(size) > 0:
        total, size = int(sizes[1]), int(size)
        pieces = [min(size, total - start) for start in range(0, total, size)]
    else:
        return
    order = {}
    for consumer in split_node.outputs:
        used = {nr for fn, nr in getattr(consumer.grad_fn, "next_functions", ()) if fn == grad_fn}
        if len(used) != 1:
            return  # a consumer of several pieces: leave it to Torch-Pruning
        order[consumer] = used.pop()
    if sorted(order.values()) != list(range(len(pieces))):
        return
    split_node.outputs.sort(key=order.get)
    offsets = [0]
    for piece in pieces:
        offsets.append(offsets[-1] + piece)
    split_node.module.split_sizes, split_node.module.offsets = pieces, offsets


MAX_MAPPED = 1_000_000  # indices one mapping may produce; real channel counts are far below
MAX_GROUP = 5_000_000  # indices one group may collect (ViT-H's embedding group: about 0.5 million)


class MappingRunaway(RuntimeError):
    """Torch-Pruning's index mapping grew past MAX_MAPPED indices (a reshape it misreads)."""


def _guard_flatten(index_mapping) -> None:
    flatten = index_mapping._FlattenIndexMapping
    original_call = flatten.__call__

    def __call__(self, idxs):
        if not self.reverse and len(idxs) * self._stride > MAX_MAPPED:
            raise MappingRunaway(f"a reshape maps {len(idxs)} channels to {len(idxs) * self._stride:,} indices "
                                 "(Torch-Pruning misreads it, e.g. a window partition)")
        return original_call(self, idxs)

    flatten.__call__ = __call__


def _guard_groups() -> None:
    """Bound what one group collects: mappings each under MAX_MAPPED can still add up (MaxViT's grid reshapes)."""
    from torch_pruning.dependency.group import Group

    original_add = Group.add_dep

    def add_dep(self, dep, idxs):
        self._prunecli_collected = getattr(self, "_prunecli_collected", 0) + len(idxs)
        if self._prunecli_collected > MAX_GROUP:
            raise MappingRunaway(f"its group collects over {MAX_GROUP:,} indices across reshapes (Torch-Pruning "
                                 "misreads them, e.g. window or grid partitions)")
        original_add(self, dep, idxs)

    Group.add_dep = add_dep


def _closure(self, module, pruning_fn, idxs):
    """Torch-Pruning 1.6's ``DependencyGraph.get_pruning_group`` with its closure computed once per index.

    Torch-Pruning follows a dependency again whenever it arrives with a different index *list*, even one whose
    indices that layer has already passed on; through channel slices (ReXNet's partial residuals, DPN's dense
    paths, CSP's splits) the same layers are reached with ever-shifted lists, the closure grows to millions of
    entries and the graph stage of a 5 M-parameter model ran past 300 s. Every index mapping maps each index on its
    own (offsets, filters, a flatten's repeats, the shuffle's ties), so following each (layer, handler, index) once
    gives the same union of indices per layer - which is what Torch-Pruning's merge step keeps. The rest (depthwise
    roots, ignored parameters, root indices) is Torch-Pruning's, unchanged."""
    from numbers import Number

    import torch
    from torch_pruning import _helpers, ops
    from torch_pruning.dependency import index_mapping
    from torch_pruning.dependency.dependency import Dependency
    from torch_pruning.dependency.group import Group
    from torch_pruning.pruner import function

    if module not in self.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
    if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    if isinstance(idxs, Number):
        idxs = [idxs]
    idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    index_mapping.update_index_mapping(self)

    group = Group()
    root_node = self.module2node[module]
    root = Dependency(pruning_fn, pruning_fn, source=root_node, target=root_node)
    group.add_dep(dep=root, idxs=idxs)
    passed = {(id(root_node), pruning_fn): {i.idx for i in idxs}}
    stack = [(root, idxs)]
    while stack:
        dep, dep_idxs = stack.pop()
        node, fn = dep.target, dep.handler
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(fn):
                continue
            new_indices = dep_idxs
            for mapping in new_dep.index_mapping:
                if mapping is not None:
                    new_indices = mapping(new_indices)
            if len(new_indices) == 0:
                continue
            done = passed.setdefault((id(new_dep.target), new_dep.handler), set())
            fresh, seen = [], set()
            for i in new_indices:
                if i.idx not in done and i.idx not in seen:
                    fresh.append(i)
                    seen.add(i.idx)
            if not fresh:
                continue
            done.update(seen)
            group.add_dep(new_dep, fresh)
            stack.append((new_dep, fresh))

    merged = Group()
    for dep, dep_idxs in group.items:
        if isinstance(dep.target.module, torch.nn.Parameter) and any(
                dep.target.module is p for p in self.ignored_params):
            continue
        merged.add_and_merge(dep, dep_idxs)
    merged._DG = self
    for k in range(len(merged)):
        hybrid = merged[k].idxs
        merged[k] = _helpers.GroupItem(merged[k].dep, _helpers.to_plain_idxs(hybrid))
        merged[k].root_idxs = _helpers.to_root_idxs(hybrid)
    return merged


def install() -> None:
    """Install the mends of the module docstring into Torch-Pruning (once per process): the shuffle mapping, chunk
    sizes, concatenations it cannot size, and the runaway bounds. Other reshapes, splits and concatenations are left
    to Torch-Pruning."""
    from torch_pruning.dependency import index_mapping

    if getattr(index_mapping.update_reshape_index_mapping, "prunecli_shuffle", False):
        return
    original = index_mapping.update_reshape_index_mapping
    original_split = index_mapping.update_split_index_mapping
    original_concat = index_mapping.update_concat_index_mapping

    def update_concat_index_mapping(graph, cat_node):
        try:
            original_concat(graph, cat_node)
        except TypeError:  # it sums the inputs' sizes before checking that it could infer them (Swin's merging)
            if None not in (getattr(cat_node.module, "concat_sizes", None) or ()):
                raise

    def update_split_index_mapping(graph, split_node):
        op = split_node.module
        if not getattr(op, "prunecli_sized", False):  # once, from the dense trace; pruning updates the sizes after
            _fix_chunks(split_node)
            op.prunecli_sized = True
        if getattr(op, "split_sizes", None) is not None:  # Torch-Pruning's SplitPruner updates the sizes but sets
            offsets = [0]                                  # the new offsets on itself, not on the split: recompute
            for size in op.split_sizes:
                offsets.append(offsets[-1] + int(size))
            op.offsets = offsets
        original_split(graph, split_node)

    def update_reshape_index_mapping(graph, reshape_node):
        shuffle = _shuffle_at(reshape_node)
        if shuffle is not None:
            _map_shuffle(reshape_node, *shuffle)
            return
        for consumer in reshape_node.outputs:  # the first view of a shuffle: the channels pass unchanged
            if _shuffle_at_any(consumer):
                return
        original(graph, reshape_node)

    original_expand = index_mapping.update_expand_index_mapping

    def update_expand_index_mapping(graph, expand_node):
        sizes = getattr(expand_node.grad_fn, "_saved_self_sym_sizes", None)
        if sizes is not None and len(sizes) == 5 and not _repeats_heads(graph, expand_node, sizes):
            return  # a batched matmul's 5-D broadcast (NesT, Twins, GC ViT), not a GQA repeat: channels pass as-is
        original_expand(graph, expand_node)

    update_reshape_index_mapping.prunecli_shuffle = True
    index_mapping.update_reshape_index_mapping = update_reshape_index_mapping
    index_mapping.update_split_index_mapping = update_split_index_mapping
    index_mapping.update_concat_index_mapping = update_concat_index_mapping
    index_mapping.update_expand_index_mapping = update_expand_index_mapping
    _guard_flatten(index_mapping)
    _guard_groups()
    from torch_pruning.dependency.graph import DependencyGraph

    DependencyGraph.get_pruning_group = _closure


def _repeats_heads(graph, expand_node, sizes) -> bool:
    """Is this 5-D expand Hugging Face's grouped-query repeat (``(b, kv_heads, 1, n, d) -> (b, kv_heads, rep, n,
    d)``), the only one Torch-Pruning maps? It maps every 5-D expand so, and divides by zero where the consumers'
    channels are fewer than the expand's (a batched matmul broadcasting attention tensors)."""
    from torch_pruning.dependency import shape_infer

    out_channels = None
    for consumer in expand_node.outputs:
        out_channels = shape_infer.infer_in_channels_recursively(graph, consumer, [0])
        if out_channels is not None:
            break
    in_channels = int(sizes[1]) * int(sizes[2]) * int(sizes[4])
    return out_channels is not None and in_channels > 0 and out_channels // in_channels >= 1


def _shuffle_at_any(node) -> bool:
    """Is ``node`` on the way from a shuffle's first view to its second (the transpose, a copy, the second view)?"""
    seen = 0
    while node is not None and seen < 3:
        if _shuffle_at(node) is not None:
            return True
        node = node.outputs[0] if len(node.outputs) == 1 else None
        seen += 1
    return False


def shuffle_split_nodes(graph) -> set:
    """The graph nodes of every channel shuffle whose output is split into chunks (see the module docstring): a group
    touching one of them cannot keep the chunks equal and is kept intact."""
    found = set()
    for node in graph.module2node.values():
        if _shuffle_at(node) is None or not _feeds_split(node):
            continue
        found.update({node, _first_view(node)})
        found.update(out for out in node.outputs if "Split" in _kind(out))  # the chunk: reached from its consumers
    return found


def failure(exc: Exception) -> str:
    """One line for an exception raised inside Torch-Pruning: its type, message and the Torch-Pruning function it
    came from (``ZeroDivisionError in Torch-Pruning's _GQAIndexMapping.__call__``)."""
    where, tb = "", exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if "torch_pruning" in code.co_filename and not code.co_name.startswith("<"):
            owner = tb.tb_frame.f_locals.get("self")
            where = f" in Torch-Pruning's {type(owner).__name__ + '.' if owner is not None else ''}{code.co_name}"
        tb = tb.tb_next
    message = f": {exc}" if str(exc) else ""
    return f"Torch-Pruning failed on it ({type(exc).__name__}{where}{message})"


def all_groups(graph, ignored_layers, root_module_types, on_runaway):
    """Torch-Pruning's ``get_all_groups``, except that a root whose group closure runs away (:class:`MappingRunaway`,
    a reshape Torch-Pruning misreads) or fails inside Torch-Pruning (a division by zero in its expand mapping, an
    index error) is reported through ``on_runaway(module, reason)`` and skipped, instead of ending the search: the
    model's other groups (e.g. a Swin block's MLP) stay prunable."""
    visited = set()
    ignored = list(ignored_layers) + list(graph.IGNORED_LAYERS_IN_TRACING)
    for module in list(graph.module2node.keys()):
        if module in ignored or not isinstance(module, tuple(root_module_types)) or module in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except MappingRunaway as exc:
            on_runaway(module, str(exc))
            continue
        except Exception as exc:  # a Torch-Pruning failure on this root only (not a stage bound: that is a BaseException)
            on_runaway(module, failure(exc))
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
                if dep.target.module in ignored:
                    prunable = False
        if prunable:
            yield group
