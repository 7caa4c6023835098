"""Channel importance criteria (mostly Torch-Pruning's importance classes), by name.

Each criterion scores every channel of a group; higher means keep. Torch-Pruning aggregates a
group's members (the root conv, its BatchNorm, the consumers' input slices) into one score per channel.
"""

from __future__ import annotations

from prunecli.core.errors import UsageError
from prunecli.core.interrupts import torch_pruning
from prunecli.core.registry import Registry

CRITERIA: Registry = Registry("criterion", "--criterion")


@CRITERIA.register("l1")
def _l1():
    """L1 norm of each channel's weights (magnitude)."""
    tp = torch_pruning()
    return tp.importance.MagnitudeImportance(p=1)


@CRITERIA.register("l2")
def _l2():
    """L2 norm of each channel's weights (magnitude)."""
    tp = torch_pruning()
    return tp.importance.MagnitudeImportance(p=2)


@CRITERIA.register("fpgm")
def _fpgm():
    """Distance from the geometric median of the group's filters (FPGM): redundant filters go first."""
    tp = torch_pruning()
    return tp.importance.FPGMImportance(p=2)


@CRITERIA.register("bn")
def _bn():
    """|gamma| of the BatchNorm after the conv (network slimming); groups without BN fall back to l1."""
    tp = torch_pruning()
    return tp.importance.BNScaleImportance()


@CRITERIA.register("lamp")
def _lamp():
    """Layer-adaptive magnitude (LAMP) scores."""
    tp = torch_pruning()
    return tp.importance.LAMPImportance(p=2)


@CRITERIA.register("random")
def _random():
    """Random scores: the control baseline (ShrinkBench). Seeded by --seed."""
    tp = torch_pruning()
    return tp.importance.RandomImportance()


@CRITERIA.register("taylor")
def _taylor():
    """|gradient x weight| (first-order Taylor) accumulated over --criterion-batches of training data."""
    tp = torch_pruning()
    return tp.importance.TaylorImportance()


@CRITERIA.register("activation")
def _activation():
    """Mean |activation| entering each consumer, per channel, over --criterion-batches (Distiller's ranker)."""
    return _accumulating_activation()


DATA_CRITERIA = ("taylor", "activation")


def _accumulating_activation():
    """Torch-Pruning's ActivationImportance keeps only the last batch; this one averages over every batch seen."""
    import contextlib

    import torch
    tp = torch_pruning()
    class AccumulatingActivationImportance(tp.importance.ActivationImportance):
        @contextlib.contextmanager
        def compute_importance(self, model):
            def hook(module, inputs, output):
                x = inputs[0].detach().abs()
                value = x.reshape(-1, x.shape[-1]).mean(0) if isinstance(module, torch.nn.Linear) else x.mean((0, 2, 3))
                count = getattr(module, "_prunecli_count", 0)
                previous = getattr(module, "_importance", None)
                module._importance = value if previous is None or count == 0 else (previous * count + value) / (count + 1)
                module._prunecli_count = count + 1

            hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
            try:
                yield
            finally:
                for h in hooks:
                    h.remove()

    return AccumulatingActivationImportance()


def _root_l1(module, channels: int):
    """L1 norm of each output filter of the group's root layer alone: the fallback when Torch-Pruning's group
    importance cannot score a group (it fails on some grouped convolutions)."""
    import torch

    weight = module.weight.detach()
    if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
        weight = weight.transpose(0, 1)
    return weight.reshape(weight.shape[0], -1).abs().sum(dim=1)[:channels]


def channel_scores(model, example_input, roots_and_channels, criterion: str, seed: int = 0, batches=None,
                   notes: list | None = None) -> dict:
    """{root: numpy array of one score per channel} for every group root, on the unpruned model.

    ``batches`` (a list of (inputs, labels)) feeds the data-driven criteria: ``taylor`` accumulates
    gradients of the cross-entropy over them, ``activation`` averages activations over them. A group the
    criterion cannot score is ranked by its root's filter L1 norms, and ``notes`` (if given) says so.
    """
    import numpy as np
    import torch

    from prunecli.graph.shrink import build_graph

    make = CRITERIA.get(criterion)
    if criterion in DATA_CRITERIA and not batches:
        raise UsageError(f"--criterion {criterion} needs training data: pass --data SPEC (e.g. --data digits)")
    importance = make()
    fallback = _l1()
    graph = build_graph(model, example_input)
    modules = dict(model.named_modules())
    torch.manual_seed(seed)
    if criterion == "taylor":
        model.eval()
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            torch.nn.functional.cross_entropy(model(x), y).backward()
    elif criterion == "activation":
        model.eval()
        with importance.compute_importance(model), torch.no_grad():
            for x, _ in batches:
                model(x)
    scores = {}
    for root, channels in roots_and_channels:
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        with torch.no_grad():
            try:
                value = importance(group)
                if value is None:  # e.g. `bn` on a group without BatchNorm
                    value = fallback(group)
            except (IndexError, RuntimeError, ValueError) as exc:
                value = _root_l1(module, channels)
                if notes is not None:
                    notes.append(f"{root}: --criterion {criterion} failed in Torch-Pruning ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); scored by the L1 norm of "
                                 f"{root}'s own filters instead")
        value = value.detach().cpu().double()
        if value.numel() > channels and value.numel() % channels == 0:
            # a group channel that stands for several of its root's (a fused qkv projection's q, k and v rows;
            # GhostNet's channel and its cheap copy): one score, summed over them
            value = value.reshape(-1, channels).sum(dim=0)
        scores[root] = np.asarray(value.numpy(), dtype=np.float64)
    if criterion == "taylor":
        model.zero_grad(set_to_none=True)
    for m in model.modules():  # drop activation statistics left on modules
        for attr in ("_importance", "_prunecli_count"):
            if hasattr(m, attr):
                delattr(m, attr)
    return scores
