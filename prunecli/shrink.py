"""Physically remove channels with Torch-Pruning's dependency graph.

A plan maps each group (named by its root layer) to the channel indices it keeps; every other
channel of the group is removed from every layer the group couples (convs, norms, the inputs of
the next layers, residual partners, concatenated consumers).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .errors import RuntimeFailure
from .interrupts import torch_pruning


def build_graph(model, example_input):
    """Torch-Pruning's DependencyGraph of ``model`` traced at ``example_input``."""
    tp = torch_pruning()
    modes = {m: m.training for m in model.modules()}  # the tracer switches the model to eval mode
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as exc:  # tracing is the library's; report which model and why
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise RuntimeFailure(
            f"Torch-Pruning cannot build the channel dependency graph of {type(model).__name__} "
            f"(an op it does not model, e.g. a channel shuffle or window reshape; {detail}); this model cannot be pruned structurally yet"
        ) from exc
    finally:
        for module, training in modes.items():
            module.train(training)


def remove_channels_(model, example_input, remove: Mapping[str, Sequence[int]], graph=None) -> None:
    """Remove ``remove[root_name]`` output channels of each group's root, with all coupled layers.

    Groups are pruned one after another on one graph, which Torch-Pruning keeps consistent
    (concat offsets are remapped as earlier groups shrink).
    """
    graph = graph if graph is not None else build_graph(model, example_input)
    modules = dict(model.named_modules())
    for root_name, idxs in remove.items():
        idxs = sorted(int(i) for i in idxs)
        if not idxs:
            continue
        if root_name not in modules:
            raise RuntimeFailure(f"plan names layer {root_name!r}, which the model does not have")
        module = modules[root_name]
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, idxs)
        group.prune()


def zero_channels_(model, example_input, remove: Mapping[str, Sequence[int]], graph=None) -> None:
    """Soft pruning: zero the removed output channels (weights, biases, norm affine) of every group member,
    keeping the tensors' shapes, so the filters stay trainable (Soft Filter Pruning)."""
    import torch

    graph = graph if graph is not None else build_graph(model, example_input)
    modules = dict(model.named_modules())
    kinds = (torch.nn.modules.conv._ConvNd, torch.nn.Linear, torch.nn.modules.batchnorm._BatchNorm,
             torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for root_name, idxs in remove.items():
            if not idxs:
                continue
            module = modules[root_name]
            pruner = graph.get_pruner_of_module(module)
            group = graph.get_pruning_group(module, pruner.prune_out_channels, sorted(int(i) for i in idxs))
            for dep, member_idxs in group:
                target = dep.target.module
                if not graph.is_out_channel_pruning_fn(dep.handler) or not isinstance(target, kinds):
                    continue
                index = torch.as_tensor(sorted(int(i) for i in member_idxs), dtype=torch.long)
                for name in ("weight", "bias"):
                    tensor = getattr(target, name, None)
                    if tensor is not None and tensor.dim() >= 1:
                        tensor.index_fill_(0, index, 0.0)
