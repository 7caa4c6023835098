"""The learned search's soft channel masks: keep probabilities from the channels' importances, and the hooks
that apply sampled masks to each group's producing layers."""

from __future__ import annotations


# ------------------------------------------------------------------------------------------- keep probabilities
def _bracket_falling(fn, value: float, lo: float, hi: float, iterations: int = 60) -> tuple[float, float]:
    """(lo, hi) around x with fn(x) = value, fn falling in x: fn(lo) > value >= fn(hi) (bisection)."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if fn(mid) > value:
            lo = mid
        else:
            hi = mid
    return lo, hi


def solve_threshold(u, alpha: float, beta2: float, iterations: int = 60) -> float:
    """log(beta1): the c with mean(sigmoid(beta2 * (u - c))) = alpha (bisection; the mean falls as c rises)."""
    import torch

    with torch.no_grad():
        lo, hi = _bracket_falling(lambda c: float(torch.sigmoid(beta2 * (u - c)).mean()), alpha,
                                  float(u.min()) - 40.0 / beta2, float(u.max()) + 40.0 / beta2, iterations)
    return 0.5 * (lo + hi)


def keep_probabilities(u, alpha, beta2: float):
    """p_i = sigmoid(beta2 * (u_i - c(alpha))), with mean(p) = alpha and dp/dalpha by implicit differentiation."""
    import torch

    c = solve_threshold(u, float(alpha.detach()), beta2)
    s = torch.sigmoid(beta2 * (u - c))
    slope = (s * (1 - s)).mean().clamp_min(1e-12)  # d mean(p) / dc = -beta2 * slope
    dc_dalpha = -1.0 / (beta2 * slope)
    c_t = c + (alpha - alpha.detach()) * dc_dalpha  # value c, gradient dc/dalpha
    return torch.sigmoid(beta2 * (u - c_t))


# ----------------------------------------------------------------------------------------------------- masks
def _producers(model, groups, roles) -> dict[str, list[str]]:
    """Per group, the modules whose outputs carry its channels last: norms, and convs/linears with no norm
    of the same group consuming their output."""
    import torch

    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        members = [n for n, r in roles.items() if r.get("out") == g.root]
        with_norm = [n for n in members if isinstance(modules[n], norms)]
        convs = [n for n in members if not isinstance(modules[n], norms)]
        out[g.root] = with_norm or convs
    return out


def importance(model, group, roles) -> "object":
    """b_i: |gamma| of the group's first norm layer with a scale, else the root's filter L1 norms (detached)."""
    import torch

    modules = dict(model.named_modules())
    for name, r in roles.items():
        m = modules[name]
        if r.get("out") == group.root and isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            return m.weight.detach().abs()
    w = modules[group.root].weight.detach()
    return w.abs().reshape(w.shape[0], -1).sum(dim=1)


class Masks:
    """Forward hooks that multiply each group's channels by its current mask."""

    def __init__(self, model, groups, roles) -> None:
        self.groups, self.roles, self.model = groups, roles, model
        self.current: dict[str, object] = {}
        self.u: dict[str, object] = {}
        modules = dict(model.named_modules())
        self.handles = []
        for root, names in _producers(model, groups, roles).items():
            for name in names:
                self.handles.append(modules[name].register_forward_hook(self._hook(root)))

    def _hook(self, root):
        def apply(module, inputs, output):
            mask = self.current.get(root)
            if mask is None:
                return output
            shape = [1, -1] + [1] * (output.dim() - 2)
            return output * mask.view(*shape).to(device=output.device, dtype=output.dtype)

        return apply

    def refresh(self) -> None:
        """Re-read every group's importances (u_i = log b_i - mean log b_i) from the current weights."""
        self.u = {}
        for g in self.groups:
            b = importance(self.model, g, self.roles).clamp_min(1e-12)
            self.u[g.root] = b.log() - b.log().mean()

    def noise(self, generator) -> dict:
        """One uniform draw per channel: mask_i = [noise_i < p_i], so masks at nearby alphas share randomness."""
        import torch

        return {g.root: torch.rand(g.channels, generator=generator) for g in self.groups}

    def set(self, alpha, beta2: float, noise: dict, straight_through: bool = False) -> None:
        """Masks at keep ratios ``alpha`` (a tensor; with ``straight_through`` its gradient flows to alpha)."""
        if not self.u:
            self.refresh()
        self.current = {}
        for k, g in enumerate(self.groups):
            p = keep_probabilities(self.u[g.root], alpha[k], beta2)
            hard = (noise[g.root].to(p.device) < p.detach()).float()
            self.current[g.root] = hard + p - p.detach() if straight_through else hard

    def sample(self, alpha, beta2: float, generator) -> None:
        """Straight-through Bernoulli masks from the keep probabilities at ``alpha`` (fresh randomness)."""
        self.set(alpha, beta2, self.noise(generator), straight_through=True)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.current = {}


# ---------------------------------------------------------------------------------------------------- search
