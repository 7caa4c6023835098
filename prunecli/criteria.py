"""Channel importance criteria (mostly Torch-Pruning's importance classes), by name.

Each criterion scores every channel of a group; higher means keep. Torch-Pruning aggregates a
group's members (the root conv, its BatchNorm, the consumers' input slices) into one score per channel.
"""

from __future__ import annotations

from .errors import UsageError
from .registry import Registry

CRITERIA: Registry = Registry("criterion", "--criterion")


@CRITERIA.register("l1")
def _l1():
    """L1 norm of each channel's weights (magnitude)."""
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=1)


@CRITERIA.register("l2")
def _l2():
    """L2 norm of each channel's weights (magnitude)."""
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=2)


@CRITERIA.register("fpgm")
def _fpgm():
    """Distance from the geometric median of the group's filters (FPGM): redundant filters go first."""
    import torch_pruning as tp

    return tp.importance.FPGMImportance(p=2)


@CRITERIA.register("bn")
def _bn():
    """|gamma| of the BatchNorm after the conv (network slimming); groups without BN fall back to l1."""
    import torch_pruning as tp

    return tp.importance.BNScaleImportance()


@CRITERIA.register("lamp")
def _lamp():
    """Layer-adaptive magnitude (LAMP) scores."""
    import torch_pruning as tp

    return tp.importance.LAMPImportance(p=2)


@CRITERIA.register("random")
def _random():
    """Random scores: the control baseline (ShrinkBench). Seeded by --seed."""
    import torch_pruning as tp

    return tp.importance.RandomImportance()


@CRITERIA.register("taylor")
def _taylor():
    """Gradient x weight (first-order Taylor); needs training data."""
    raise UsageError(
        "--criterion taylor needs gradients from training data, and data loading (--data) is not available yet; "
        "use l1, l2, fpgm, bn, lamp or random"
    )


def channel_scores(model, example_input, roots_and_channels, criterion: str, seed: int = 0) -> dict:
    """{root: numpy array of one score per channel} for every group root, on the unpruned model."""
    import numpy as np
    import torch

    from .shrink import build_graph

    make = CRITERIA.get(criterion)
    importance = make()
    fallback = _l1()
    graph = build_graph(model, example_input)
    modules = dict(model.named_modules())
    torch.manual_seed(seed)
    scores = {}
    for root, channels in roots_and_channels:
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        with torch.no_grad():
            value = importance(group)
            if value is None:  # e.g. `bn` on a group without BatchNorm
                value = fallback(group)
        scores[root] = np.asarray(value.detach().cpu().double().numpy(), dtype=np.float64)
    return scores
