"""Attention layers: their heads, which of their channels may go together, and what to update after removal.

Torch-Pruning's dependency graph removes the right weights of an attention layer - a fused qkv projection's
index ``i`` (``0 <= i < heads * head_dim``) is q_i, k_i and v_i together, with the output projection's input
``i`` - and prunes ``nn.MultiheadAttention``'s embedding with the residual stream. It does not know which head an
index belongs to, and it does not update what the forward pass reads (timm's ``num_heads``, ``head_dim``,
``attn_dim`` and ``scale``; torchvision ViT's ``hidden_dim``, which :mod:`prunecli.graph.widths` sets). This module does both, for the layer kinds below:

* **Which indices go together.** In a qkv group, the same positions in every head (every head keeps the same
  width: ``channel_groups = heads``), or with ``--prune-heads`` whole heads (``block = head_dim``). In an
  embedding that feeds ``nn.MultiheadAttention`` (whose heads are contiguous slices of the embedding), the same
  positions in every head.
* **After removal** (:func:`refresh_`): the head count and width are read off the removed indices (whole heads,
  or the same number of positions in every head; anything else is refused), the attributes are set, and the
  softmax scale is kept: the query rows are multiplied by sqrt(new head_dim / old head_dim), so that the pruned
  layer computes what the dense layer computes with the removed dimensions zeroed - which
  :func:`prunecli.graph.shrink.check_against_dense` then verifies.

Attention layers of other kinds are not updated; when removing their channels breaks the forward pass, the
graph stage's meta-device trial finds it and keeps those channels (``prunecli inspect`` says why).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from prunecli.core.errors import RuntimeFailure


@dataclass(frozen=True)
class Heads:
    """One attention layer as prunecli sees it."""

    name: str  # the attention module
    kind: str  # "timm" (fused qkv Linear, num_heads/head_dim attributes) or "mha" (torch.nn.MultiheadAttention)
    num_heads: int
    head_dim: int
    qkv: str | None  # the fused qkv projection (timm); None where the heads live in the embedding (mha)
    head_norm: bool = False  # a norm over head_dim (timm's q_norm/k_norm): its width cannot change

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    def to_json(self) -> dict:
        return {"layer": self.name, "kind": self.kind, "num_heads": self.num_heads, "head_dim": self.head_dim}


def _timm_attention_class():
    """timm's standard attention class, when timm has been imported (prunecli never imports it for this)."""
    module = sys.modules.get("timm.layers.attention")
    return getattr(module, "Attention", None) if module is not None else None


def _heads_of(name: str, module, names: dict) -> Heads | None:
    import torch

    timm_attention = _timm_attention_class()
    if timm_attention is not None and isinstance(module, timm_attention):
        head_norm = any(not isinstance(getattr(module, attr, None), (torch.nn.Identity, type(None)))
                        for attr in ("q_norm", "k_norm"))
        return Heads(name, "timm", int(module.num_heads), int(module.head_dim), names[module.qkv], head_norm)
    if isinstance(module, torch.nn.MultiheadAttention) and module._qkv_same_embed_dim:
        return Heads(name, "mha", int(module.num_heads), int(module.head_dim), None)
    return None


def find(model) -> dict[str, Heads]:
    """{module name: Heads} for every attention layer of a kind prunecli updates."""
    names = {m: n for n, m in model.named_modules()}
    found = {}
    for name, module in model.named_modules():
        heads = _heads_of(name, module, names)
        if heads is not None:
            found[name] = heads
    return found


def by_qkv(found: Mapping[str, Heads]) -> dict[str, Heads]:
    return {h.qkv: h for h in found.values() if h.qkv is not None}


def qkv_layout(heads: Heads, prune_heads: bool) -> tuple[int, int, int] | str:
    """(channels, channel_groups, block) of the group rooted at ``heads``' qkv projection: its index space is
    ``heads * head_dim`` (each index is a q, a k and a v row). A string says why the group cannot be pruned."""
    if prune_heads:
        if heads.num_heads < 2:
            return f"{heads.name} has a single head: --prune-heads cannot remove it"
        return heads.width, 1, heads.head_dim
    if heads.head_norm:
        return (f"{heads.name} normalises q and k over head_dim (q_norm/k_norm), whose width cannot change; "
                "pass --prune-heads to remove whole heads instead")
    return heads.width, heads.num_heads, 1


def member_channel_groups(module) -> int:
    """Equal blocks a member of a group must lose the same positions in: an nn.MultiheadAttention fed by the
    group's channels keeps equal, aligned heads."""
    import torch

    if isinstance(module, torch.nn.MultiheadAttention):
        return int(module.num_heads)
    return 1


def _scale_queries_(weight, bias, rows: int, factor: float) -> None:
    weight[:rows].mul_(factor)
    if bias is not None:
        bias[:rows].mul_(factor)


def _new_layout(heads: Heads, removed: Sequence[int]) -> tuple[int, int]:
    """(num_heads, head_dim) after removing ``removed`` qkv indices: whole heads, or as many positions from
    every head. Anything else leaves heads of unequal width and is refused."""
    hd = heads.head_dim
    per_head = [0] * heads.num_heads
    for index in set(int(i) for i in removed):
        per_head[index // hd] += 1
    if all(count in (0, hd) for count in per_head):
        kept = sum(1 for count in per_head if count == 0)
        if kept == 0:
            raise RuntimeFailure(f"the plan removes every head of {heads.name}; keep at least one")
        return kept, hd
    if len(set(per_head)) == 1:
        return heads.num_heads, hd - per_head[0]
    raise RuntimeFailure(f"the plan removes {per_head} dimensions from the {heads.num_heads} heads of {heads.name}; "
                         "a head keeps all or none of them, or every head loses as many (the plan was not made "
                         "for this model: re-plan it with `prunecli prune`)")


def refresh_(model, before: Mapping[str, Heads], remove: Mapping[str, Sequence[int]]) -> None:
    """Set the attributes each attention layer's forward reads after its channels were removed, and keep its
    softmax scale (see the module docstring). ``before`` is :func:`find` on the model before removal; ``remove``
    the removed indices by group root."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for heads in before.values():
            module = modules[heads.name]
            if heads.kind == "timm":
                removed = remove.get(heads.qkv, ())
                if not removed:
                    continue
                num_heads, head_dim = _new_layout(heads, removed)
                module.num_heads, module.head_dim = num_heads, head_dim
                if hasattr(module, "attn_dim"):
                    module.attn_dim = num_heads * head_dim
                if head_dim != heads.head_dim:
                    qkv = module.qkv
                    _scale_queries_(qkv.weight, qkv.bias, num_heads * head_dim, math.sqrt(head_dim / heads.head_dim))
                    if hasattr(module, "scale"):
                        module.scale = head_dim ** -0.5
            else:  # mha: Torch-Pruning removed embedding positions and set head_dim = embed_dim // num_heads
                if module.embed_dim % heads.num_heads:
                    raise RuntimeFailure(f"{heads.name}: embedding width {module.embed_dim} is not a multiple of its "
                                         f"{heads.num_heads} heads after pruning")
                head_dim = module.embed_dim // heads.num_heads
                if head_dim != heads.head_dim:
                    _scale_queries_(module.in_proj_weight, module.in_proj_bias, module.embed_dim,
                                    math.sqrt(head_dim / heads.head_dim))
                module.head_dim = head_dim


def heads_problems(model) -> list[str]:
    """Attention layers whose attributes disagree with their weights (what a pruning that forgot to update the
    heads leaves behind): empty when every layer is consistent."""
    problems = []
    modules = dict(model.named_modules())
    for heads in find(model).values():
        module = modules[heads.name]
        if heads.kind == "timm":
            qkv_width = module.qkv.out_features // 3
            widths = {"qkv": qkv_width, "proj input": module.proj.in_features}
            if hasattr(module, "attn_dim"):
                widths["attn_dim"] = module.attn_dim
            if any(w != heads.width for w in widths.values()):
                problems.append(f"{heads.name}: num_heads {heads.num_heads} x head_dim {heads.head_dim} = "
                                f"{heads.width}, but " + ", ".join(f"{k} {v}" for k, v in widths.items()))
        elif heads.width != module.embed_dim:
            problems.append(f"{heads.name}: num_heads {heads.num_heads} x head_dim {heads.head_dim} = {heads.width}, "
                            f"but embed_dim {module.embed_dim}")
    return problems
