"""FLOPs or params of a model as a polynomial in its groups' keep ratios.

Every layer's cost is bilinear in the channels it keeps on its output side and its input side (a convolution's
FLOPs and weights; a depthwise convolution's and a norm's are linear in one group), so the polynomial evaluated at
``kept / channels`` is the pruned model's cost: differentiable for the learned search, exact (to rounding) for the
budget fit's candidates, where it replaces pruning a meta-device copy per candidate (:class:`prunecli.plan.budget.
AnalyticOracle` checks it against that on the plan it returns).
"""

from __future__ import annotations


class ExpectedCost:
    """FLOPs or params of the model as a polynomial in the groups' keep ratios."""

    def __init__(self, model, example_input, groups, metric: str, roles=None) -> None:
        import torch

        from prunecli.graph.cost import module_flops
        from prunecli.graph.groups import channel_roles

        self.roots = [g.root for g in groups]
        index = {r: i for i, r in enumerate(self.roots)}
        roles = roles if roles is not None else channel_roles(model, example_input, groups)
        self.terms: list[tuple[float, int | None, dict]] = []  # (dense cost, out group, {in group: share})
        self.constant = 0.0
        modules = dict(model.named_modules())
        per_module = module_flops(model, example_input) if metric == "flops" else None
        for name, module in modules.items():
            role = roles.get(name, {})
            out_g = index.get(role.get("out"))
            width = _in_width(module)
            in_g = {index[r]: n / width for r, n in role.get("in", {}).items() if r in index and width}
            depthwise = isinstance(module, torch.nn.modules.conv._ConvNd) and module.groups > 1 \
                and module.groups == module.in_channels == module.out_channels
            if depthwise:
                in_g = {}  # its input channels are its output channels: linear in one ratio
            if metric == "flops":
                value = float(per_module.get(name, 0))
                if value:
                    self._add(value, out_g, in_g)
                continue
            for pname, p in module.named_parameters(recurse=False):
                if p.dim() >= 2:
                    self._add(float(p.numel()), out_g, in_g)
                else:  # biases, norm scales: one entry per output channel
                    self._add(float(p.numel()), out_g, {})
        self.dense = self.constant + sum(t[0] for t in self.terms)

    def _add(self, value: float, out_g, in_g: dict) -> None:
        if out_g is None and not in_g:
            self.constant += value
        else:
            self.terms.append((value, out_g, in_g))

    def __call__(self, alpha):
        """Expected cost for keep ratios ``alpha`` (a 1-D tensor, differentiable). An input side fed by a
        concatenation is the share-weighted sum of its groups' ratios (fixed channels count 1)."""
        import torch

        return torch.zeros((), dtype=alpha.dtype) + self.at(alpha)

    def at(self, ratios) -> float:
        """The polynomial at keep ratios ``ratios`` (in ``roots`` order): floats, or a tensor (then differentiable)."""
        total = self.constant
        for value, out_g, in_g in self.terms:
            out_factor = ratios[out_g] if out_g is not None else 1.0
            in_factor = (1.0 - sum(in_g.values())) + sum(share * ratios[g] for g, share in in_g.items()) if in_g else 1.0
            total = total + value * out_factor * in_factor
        return total


def _in_width(module) -> int:
    for attr in ("in_channels", "in_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return 0
