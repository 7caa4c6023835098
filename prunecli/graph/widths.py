"""Widths a model's forward pass reads from an attribute, which pruning must update (Torch-Pruning changes the
layers' tensors, not the Python attributes a forward uses to reshape or slice).

Each entry of :data:`FIXUPS` recognises a module kind, records what it needs before pruning (:func:`snapshot`) and
sets the attribute from the pruned layers afterwards (:func:`refresh_`). A model whose width attribute is not
known here keeps the groups that would break it intact (the graph stage's meta-device trial finds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Fixup:
    """``before(module)``: what to remember (None: the module is not this kind, or needs nothing);
    ``after(module, remembered)``: set the attribute from the pruned layers."""

    name: str
    before: Callable
    after: Callable


def _vit_before(module):
    """torchvision's VisionTransformer reshapes the patch embedding to ``hidden_dim``."""
    import torch

    conv_proj = getattr(module, "conv_proj", None)
    if isinstance(getattr(module, "hidden_dim", None), int) and isinstance(conv_proj, torch.nn.Conv2d):
        return True
    return None


def _vit_after(module, _):
    module.hidden_dim = module.conv_proj.out_channels


def _ghost_before(module):
    """timm's GhostModule returns ``cat([primary, cheap])[:, :out_chs]``: where the slice keeps every channel (the
    usual case), it must keep every channel after pruning too."""
    primary, cheap = getattr(module, "primary_conv", None), getattr(module, "cheap_operation", None)
    out_chs = getattr(module, "out_chs", None)
    if primary is None or cheap is None or not isinstance(out_chs, int):
        return None
    width = _conv_out(primary) + _conv_out(cheap)
    return width == out_chs or None


def _ghost_after(module, _):
    module.out_chs = _conv_out(module.primary_conv) + _conv_out(module.cheap_operation)


def _conv_out(sequential) -> int:
    import torch

    convs = [m for m in sequential.modules() if isinstance(m, torch.nn.Conv2d)]
    return int(convs[0].out_channels) if convs else 0


FIXUPS = (
    Fixup("torchvision VisionTransformer.hidden_dim", _vit_before, _vit_after),
    Fixup("timm GhostModule.out_chs", _ghost_before, _ghost_after),
)


def snapshot(model) -> list[tuple[str, Fixup, object]]:
    """(module name, fixup, remembered) for every module a fixup recognises, before pruning."""
    found = []
    for name, module in model.named_modules():
        for fixup in FIXUPS:
            remembered = fixup.before(module)
            if remembered is not None:
                found.append((name, fixup, remembered))
    return found


def refresh_(model, before: list) -> None:
    modules = dict(model.named_modules())
    for name, fixup, remembered in before:
        fixup.after(modules[name], remembered)
