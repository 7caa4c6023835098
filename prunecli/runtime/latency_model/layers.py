"""The layers the latency model times: every Conv2d and Linear of a model, with its input shape and which
group's channels each side follows."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Side:
    """A layer's channel count on one side as a function of the groups' kept counts:
    ``fixed + sum(coeff * kept[root])`` (a concatenation's consumer has several terms, a linear layer after a
    flatten a coefficient of the spatial size)."""

    dense: int
    fixed: float = 0.0
    terms: tuple = ()  # ((root, coeff), ...)

    def at(self, counts: dict) -> int:
        if not self.terms:
            return self.dense
        return int(round(self.fixed + sum(c * counts[r] for r, c in self.terms)))

    @property
    def direct(self) -> bool:
        """The count is one group's count itself (the staircase applies to it as measured)."""
        return len(self.terms) == 1 and self.fixed == 0 and self.terms[0][1] == 1


@dataclass(frozen=True)
class Layer:
    name: str
    op: str  # "conv" | "linear"
    shape: tuple  # input shape at the runtime batch, channel dim as measured dense
    cin: Side
    cout: Side
    kernel: tuple = ()
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    groups: int = 1
    depthwise: bool = False
    bias: bool = True

    def signature(self) -> str:
        """Everything the latency of this layer depends on except its channel counts."""
        lead = list(self.shape)
        lead[1 if self.op == "conv" else -1] = None
        return json.dumps([self.op, lead, self.kernel, self.stride, self.padding, self.dilation,
                           "dw" if self.depthwise else self.groups, self.bias])


def layers_of(model, example_input, groups, batch: int) -> list[Layer]:
    """The Conv2d and Linear layers the forward pass runs, with how each side's channels follow the groups."""
    import torch

    from prunecli.graph.groups import channel_roles

    shapes: dict = {}
    hooks = []

    def record(name):
        def hook(module, inputs, output) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    roles = channel_roles(model, example_input, groups)
    channels = {g.root: g.channels for g in groups}
    modules = dict(model.named_modules())
    layers = []
    for name, shape in shapes.items():
        module = modules[name]
        role = roles.get(name, {})
        conv = isinstance(module, torch.nn.Conv2d)
        dense_in = module.in_channels if conv else module.in_features
        dense_out = module.out_channels if conv else module.out_features
        depthwise = conv and module.groups > 1 and module.groups == dense_in == dense_out
        out_root = role.get("out")
        cout = Side(dense_out, 0.0, ((out_root, dense_out / channels[out_root]),)) if out_root else Side(dense_out)
        ins = role.get("in", {})
        if depthwise:
            cin = cout
        elif ins:
            fixed = dense_in - sum(ins.values())
            cin = Side(dense_in, float(fixed), tuple((r, n / channels[r]) for r, n in sorted(ins.items())))
        else:
            cin = Side(dense_in)
        shape = (batch, *shape[1:])  # the runtime's batch
        layers.append(Layer(
            name=name, op="conv" if conv else "linear", shape=tuple(int(s) for s in shape), cin=cin, cout=cout,
            kernel=tuple(module.kernel_size) if conv else (), stride=tuple(module.stride) if conv else (),
            padding=_padding(module, shape) if conv else (), dilation=tuple(module.dilation) if conv else (),
            groups=module.groups if conv else 1, depthwise=depthwise, bias=module.bias is not None,
        ))
    return layers


def _padding(module, shape) -> tuple:
    if isinstance(module.padding, str):  # "same" / "valid"
        if module.padding == "valid":
            return (0, 0)
        return tuple((d * (k - 1)) // 2 for k, d in zip(module.kernel_size, module.dilation))
    return tuple(module.padding)
