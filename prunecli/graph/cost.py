"""Counting what a model costs.

- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass at the example input.
  It counts 2 FLOPs per multiply-add of convolutions, linear layers, matmuls and attention;
  elementwise ops, normalisation, activations and pooling are not counted.
- **MACs**: Torch-Pruning's ``count_ops_and_params`` (multiply-accumulates of conv/linear layers plus
  normalisation and pooling layers), an independent counter; it is close to FLOPs/2 but not equal.
- **params**: the number of elements of ``model.parameters()`` (buffers excluded).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prunecli.core.interrupts import torch_pruning

FLOPS_LABEL = "FLOPs (FlopCounterMode: 2 per multiply-add in conv/linear/matmul; elementwise ops not counted)"
MACS_LABEL = "MACs (Torch-Pruning count_ops_and_params: conv/linear/norm multiply-accumulates)"
PARAMS_LABEL = "params (elements of model.parameters())"


@dataclass(frozen=True)
class Cost:
    flops: int
    macs: int
    params: int

    def ratio_to(self, base: "Cost") -> dict[str, float]:
        return {
            "flops_ratio": self.flops / base.flops if base.flops else 1.0,
            "macs_ratio": self.macs / base.macs if base.macs else 1.0,
            "params_ratio": self.params / base.params if base.params else 1.0,
        }


@contextlib.contextmanager
def _flop_counter():
    """FlopCounterMode that counts attention wherever it runs. Torch counts the CUDA attention kernels and the
    unfused matmuls, but not ``_scaled_dot_product_flash_attention_for_cpu`` nor nn.MultiheadAttention's inference
    fast path (``_native_multi_head_attention``, projections included): an attention model counted on the CPU
    would lose those FLOPs, while a copy counted on the meta device (the unfused path) would not. So the CPU kernel
    gets the formula of the CUDA ones, and the fast path is off while counting."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_kernel = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False,
                             custom_mapping={cpu_kernel: cpu_attention} if cpu_kernel is not None else None) as counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


@contextlib.contextmanager
def _frozen(model):
    """Parameters not requiring grad while counting: FlopCounterMode's module tracker hooks every input tensor that
    requires grad, and a parameter passed to a submodule as an input under ``no_grad`` (PiT's class token) has no
    gradient function to hook (``AssertionError: Expected gradient function to be set``)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _counted(model, example_input):
    import torch

    with torch.no_grad(), _frozen(model), _flop_counter() as counter:
        model(example_input)
    return counter


def count_flops(model, example_input) -> int:
    return int(_counted(model, example_input).get_total_flops())


def module_flops(model, example_input) -> dict[str, int]:
    """FLOPs per module name, exclusive of its submodules (so the values add up to the total)."""
    counter = _counted(model, example_input)
    root = type(model).__name__
    inclusive: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root else key[len(root) + 1 :] if key.startswith(root + ".") else key
        inclusive[name] = int(sum(per_op.values()))
    exclusive = {}
    for name, value in inclusive.items():
        prefix = f"{name}." if name else ""
        children = [
            n for n in inclusive if n.startswith(prefix) and n != name and "." not in n[len(prefix) :]
        ]
        exclusive[name] = value - sum(inclusive[c] for c in children)
    return exclusive


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model, example_input) -> int:
    import torch
    tp = torch_pruning()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, example_input)
    return int(macs)


def measure(model, example_input) -> Cost:
    """FLOPs, MACs and params, counted on a shape-only (meta) copy when the model's ops allow it: the counts
    depend on shapes alone, and nothing is computed."""
    import copy

    try:
        meta, x = copy.deepcopy(model).to("meta"), example_input.to("meta")
        return Cost(flops=count_flops(meta, x), macs=count_macs(meta, x), params=count_params(model))
    except Exception:  # an op without a meta kernel: count on the real model
        return Cost(flops=count_flops(model, example_input), macs=count_macs(model, example_input),
                    params=count_params(model))
