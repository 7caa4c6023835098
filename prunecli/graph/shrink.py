"""Physically remove channels with Torch-Pruning's dependency graph.

A plan maps each group (named by its root layer) to the channel indices it keeps; every other
channel of the group is removed from every layer the group couples (convs, norms, the inputs of
the next layers, residual partners, concatenated consumers).
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

from prunecli.core.deadline import bounded
from prunecli.core.errors import RuntimeFailure, VerificationFailed
from prunecli.core.interrupts import torch_pruning
from prunecli.graph.plans import Plan


def build_graph(model, example_input):
    """Torch-Pruning's DependencyGraph of ``model`` traced at ``example_input``."""
    from prunecli.graph import tracing

    tp = torch_pruning()
    tracing.install()  # channel shuffles get their index mapping (Torch-Pruning cannot trace them alone)
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
    (concat offsets are remapped as earlier groups shrink). Attention layers are then updated to their new
    heads (:func:`prunecli.graph.attention.refresh_`) and width attributes the forward reads (:mod:`prunecli.graph.widths`).
    """
    from prunecli.graph import attention, widths

    graph = graph if graph is not None else build_graph(model, example_input)
    heads, width_attrs = attention.find(model), widths.snapshot(model)
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
        gains = _gains(graph, group)
        group.prune()
        _prune_gains_(gains)
    attention.refresh_(model, heads, remove)
    widths.refresh_(model, width_attrs)


def _gains(graph, group) -> list:
    """(layer, removed output channels) for every layer of the group with a per-output-channel ``gain`` parameter
    (weight-standardised convs: timm's ScaledStdConv2d in NFNets), which Torch-Pruning's conv pruner leaves at the
    dense width. Read before the group is pruned."""
    import torch

    found = []
    for dep, idxs in group:
        layer = dep.target.module
        gain = getattr(layer, "gain", None)
        if (isinstance(gain, torch.nn.Parameter) and gain.dim() >= 1 and isinstance(layer, torch.nn.Module)
                and gain.shape[0] == getattr(layer, "out_channels", None)
                and graph.is_out_channel_pruning_fn(dep.handler)):
            found.append((layer, {int(i) for i in idxs}))
    return found


def _prune_gains_(gains) -> None:
    """Cut each gain to the rows its layer kept. The layer's fixed ``scale`` (gamma / sqrt(fan-in) at construction)
    stays: each remaining weight is standardised over the remaining inputs and scaled as in the dense layer."""
    import torch

    for layer, removed in gains:
        keep = [i for i in range(layer.gain.shape[0]) if i not in removed]
        layer.gain = torch.nn.Parameter(layer.gain.data[keep].clone(), requires_grad=layer.gain.requires_grad)


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


# Leaf modules through which a zeroed channel stays exactly zero, or contributes nothing, once its producers'
# weights, biases and norm affines are zeroed. Anything else with parameters, or a norm across channels, and
# the identity below is not claimed.
_LINEAR_KINDS = ("_ConvNd", "Linear", "_BatchNorm", "_InstanceNorm")
_ACROSS_CHANNELS = ("LayerNorm", "GroupNorm", "LocalResponseNorm", "MultiheadAttention", "RMSNorm")
TOLERANCE = 1e-4  # relative to the largest output magnitude


def _touched(model, graph, remove: Mapping[str, Sequence[int]]) -> tuple[list, bool]:
    """(``(name, module, inputs)`` for every module whose channels the removal touches - ``inputs``: its input
    channels are among them -, whether it touches a bare parameter such as a position embedding)."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    touched, bare = [], False
    for root_name, idxs in remove.items():
        if not idxs:
            continue
        module = modules[root_name]
        group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels,
                                        sorted(int(i) for i in idxs))
        for dep, _ in group:
            target = dep.target.module
            if target in names:
                touched.append((names[target], target, graph.is_in_channel_pruning_fn(dep.handler)))
            elif type(target).__name__ == "UnwrappedParameter":
                bare = True
    return touched, bare


def _weights_mix_inputs(module) -> bool:
    """Does a conv or linear layer with a forward of its own (not torch's) compute its weight from all its input
    channels, as weight standardisation does (timm's StdConv2d, ScaledStdConv2d)? Probed, not guessed from names:
    with input channel 0 zero, torch's layers ignore that channel's weights; such a layer does not. A layer the
    probe cannot run counts as mixing (the identity is then not claimed)."""
    import copy

    import torch

    if not isinstance(module, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
        return False
    if type(module).forward.__module__.startswith("torch."):
        return False
    try:
        probe = copy.deepcopy(module).float().eval()
        if isinstance(probe, torch.nn.Linear):
            x = torch.randn(2, probe.in_features)
        else:
            sizes = [max(8, d * (k - 1) + 1) for k, d in zip(probe.kernel_size, probe.dilation)]
            x = torch.randn(1, probe.in_channels, *sizes)
        x[:, 0] = 0
        with torch.no_grad():
            before = probe(x)
            column = probe.weight[:, 0] if not getattr(probe, "transposed", False) else probe.weight[0]
            column.mul_(3.0).add_(1.0)
            after = probe(x)
        return not torch.allclose(before, after, rtol=1e-5, atol=1e-6 * float(before.abs().max()))
    except Exception:
        return True


def _blocker(model, graph, remove: Mapping[str, Sequence[int]]) -> str | None:
    """Why the zeroed-dense identity cannot be claimed for this removal (None when it can): a layer the removed
    channels pass through mixes channels, or holds parameters prunecli does not zero."""
    import torch

    touched, bare = _touched(model, graph, remove)
    for name, module, inputs in touched:
        kinds = {cls.__name__ for cls in type(module).__mro__}
        if kinds & set(_ACROSS_CHANNELS):
            return f"{name} ({type(module).__name__}) mixes channels, so a zeroed channel is not a removed one there"
        if inputs and _weights_mix_inputs(module):
            return (f"{name} ({type(module).__name__}) computes its weight from all its input channels (weight "
                    "standardisation), so a zeroed input channel is not a removed one there")
        if next(module.children(), None) is not None:
            continue
        own = [p for p in module.parameters(recurse=False)]
        if own and not kinds & set(_LINEAR_KINDS) and not isinstance(module, torch.nn.PReLU):
            return f"{name} ({type(module).__name__}) has parameters prunecli does not zero"
    if bare:
        return "a removed channel runs through a bare parameter (e.g. a position embedding) prunecli does not zero"
    return None


class MisPruned(VerificationFailed):
    """The check against the dense model failed; ``roots``: the groups (by root layer) that fail it on their own."""

    def __init__(self, message: str, roots) -> None:
        super().__init__(message)
        self.roots = tuple(roots)


def _zeroed_dense_diff(source, pruned, example_input, remove):
    """(max abs difference between ``pruned`` and the dense model with the removed channels zeroed, the dense
    output's scale, the tolerance); (None, None, None) when the output is not one tensor."""
    import copy

    import torch

    zeroed = copy.deepcopy(source).eval()
    zero_channels_(zeroed, example_input, remove)  # a graph of its own: the copy's modules
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(example_input.shape, generator=generator, dtype=example_input.dtype) \
        if example_input.is_floating_point() else example_input
    with torch.no_grad():
        expected, got = zeroed(x), pruned.eval()(x)
    if not (isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor)):
        return None, None, None
    if expected.shape != got.shape:
        raise VerificationFailed(f"the pruned model's output shape {tuple(got.shape)} is not the dense model's "
                                 f"{tuple(expected.shape)}; the bundle was not written")
    diff = float((expected.float() - got.float()).abs().max())
    scale = float(expected.float().abs().max())
    return diff, scale, TOLERANCE * scale + 1e-30  # relative: a random-init network can have logits of 1e-10


def _failing_groups(source, example_input, remove) -> list[str]:
    """The roots whose removal alone already fails the zeroed-dense check (run only after the whole plan failed)."""
    import copy

    culprits = []
    for root, idxs in remove.items():
        if not idxs:
            continue
        alone = {root: idxs}
        pruned = copy.deepcopy(source)
        try:
            remove_channels_(pruned, example_input, alone)
            diff, _, tolerance = _zeroed_dense_diff(source, pruned, example_input, alone)
        except Exception:  # noqa: BLE001 - pruning this group alone breaks the model: it fails on its own
            culprits.append(root)
            continue
        if diff is not None and not diff <= tolerance:
            culprits.append(root)
    return culprits


def mis_pruned(source, example_input, remove, what: str) -> MisPruned:
    """The error for a pruning that came out wrong (``what`` happened), naming the groups that fail on their own."""
    culprits = _failing_groups(source, example_input, remove)
    named = f" - the groups rooted at {', '.join(culprits)} fail on their own" if culprits else ""
    return MisPruned(
        f"{what}{named}; Torch-Pruning did not update some layer consistently (e.g. an attention layer's heads or a "
        "reshape over channels). The bundle was not written; --ignore "
        + (" --ignore ".join(culprits) if culprits else "the layer (see `prunecli inspect`)") + " and retry", culprits)


def check_against_dense(source, pruned, example_input, remove: Mapping[str, Sequence[int]]) -> dict:
    """Is ``pruned`` the dense model without the removed channels? Where the identity holds (the removed channels
    pass only through convs, linear layers, BatchNorm, activations with f(0)=0, pooling, adds, concats and
    attention heads), the dense model with the removed channels zeroed (weights, biases, norm affines of every
    layer the groups couple) must give the pruned model's outputs on a random input, within float tolerance; a
    difference means the channels removed are not the channels planned (VerificationFailed, exit 3). Where a
    removed channel passes a layer that mixes channels (LayerNorm, GroupNorm), only the output shape is compared,
    and the result says why. Attention layers' heads must agree with their weights either way."""
    from prunecli.graph import attention

    problems = attention.heads_problems(pruned)
    if problems:
        raise VerificationFailed(f"an attention layer's heads do not match its weights after pruning ({problems[0]}); "
                                 "the bundle was not written")
    found = attention.find(pruned)
    heads = {"attention": [h.to_json() for h in found.values()]} if found else {}
    graph = build_graph(source, example_input)
    blocker = _blocker(source, graph, remove)
    if blocker is not None:
        return {"check": "output shape", "identity": False, "reason": blocker, **heads}
    diff, scale, tolerance = _zeroed_dense_diff(source, pruned, example_input, remove)
    if diff is None:
        return {"check": "output shape", "identity": False, "reason": "the model's output is not one tensor", **heads}
    if not diff <= tolerance:
        raise mis_pruned(source, example_input, remove,
                         "the pruned model is not the dense model without the removed channels: on a random input its "
                         f"outputs differ from the dense model with those channels zeroed by {diff:.3g} (tolerance "
                         f"{tolerance:.3g})")
    return {"check": "zeroed dense model", "identity": True, "max_abs_diff": diff, "tolerance": tolerance,
            "output_scale": scale, **heads}


def shrink_copy(loaded, plan: Plan, checks: list | None = None, timeout: float | None = None):
    """A physically pruned copy of ``loaded`` (a LoadedModel: its model and example input), left as it was. ``checks`` (if given) gets the result of
    checking the copy against the dense model (:func:`check_against_dense`), which raises
    VerificationFailed (exit 3) when the pruning is wrong."""
    import torch

    with bounded("shrink", timeout):
        pruned = copy.deepcopy(loaded.model)
        remove_channels_(pruned, loaded.example_input, plan.removed())
        pruned.eval()
        with torch.no_grad():
            before = loaded.model(loaded.example_input)
            try:
                after = pruned(loaded.example_input)
            except Exception as exc:  # noqa: BLE001 - the pruning broke the model: say which groups did it
                raise mis_pruned(loaded.model, loaded.example_input, plan.removed(),
                                 f"the pruned model fails to run ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if tuple(before.shape) != tuple(after.shape):
            raise RuntimeFailure(f"pruning changed the output shape {tuple(before.shape)} -> {tuple(after.shape)}")
        if checks is not None:
            checks.append(check_against_dense(loaded.model, pruned, loaded.example_input, plan.removed()))
    return pruned
