"""The `inspect` stage: one JSON-ready document describing a loaded model's prunability."""

from __future__ import annotations

from .cost import FLOPS_LABEL, MACS_LABEL, PARAMS_LABEL, count_macs
from .graph import analyse
from .errors import UsageError
from .load import LoadedModel

SCHEMA_VERSION = 1


def check_ignore(loaded: LoadedModel, ignore: tuple[str, ...]) -> None:
    """Every --ignore pattern must name at least one module (a typo would otherwise be silently void)."""
    import fnmatch

    names = [name for name, _ in loaded.model.named_modules() if name]
    for pattern in ignore:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            close = [n for n in names if fnmatch.fnmatchcase(n, f"*{pattern.strip('*')}*")][:3] or names[:3]
            raise UsageError(f"--ignore {pattern!r} matches no module of {loaded.display_name} "
                             f"(module names look like {', '.join(close)}); see `prunecli inspect`")


def constraints_for(loaded: LoadedModel, ignore: tuple[str, ...], round_to: int | None) -> tuple[tuple[str, ...], int]:
    """--ignore patterns plus the preset's, and --round-to or the preset's (else 1)."""
    check_ignore(loaded, tuple(ignore))
    preset = loaded.preset
    patterns = tuple(ignore) + (preset.ignore if preset else ())
    step = round_to if round_to is not None else (preset.round_to if preset else 1)
    return patterns, step


def prunable_groups(loaded: LoadedModel, *, ignore=(), round_to=None, min_channels: int = 1, prune_heads: bool = False):
    """(analysis, round_to) as `prune` sees the model: groups whose removal breaks the forward pass
    (e.g. a width the model's Python code hard-codes, as ViT's hidden_dim) are found on a meta-device
    trial and marked unprunable."""
    patterns, step = constraints_for(loaded, tuple(ignore), round_to)
    analysis = analyse(loaded.model, loaded.example_input, ignore=patterns, round_to=step,
                       min_channels=min_channels, measure_range=True, prune_heads=prune_heads)
    return analysis, step


def inspect_model(loaded: LoadedModel, *, ignore=(), round_to=None, min_channels: int = 1,
                  prune_heads: bool = False) -> dict:
    from . import attention

    patterns, step = constraints_for(loaded, tuple(ignore), round_to)
    analysis = analyse(loaded.model, loaded.example_input, ignore=patterns, round_to=step, min_channels=min_channels,
                       prune_heads=prune_heads)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": loaded.display_name,
        "arch": loaded.arch,
        "input_shape": list(loaded.input_shape),
        "preset": loaded.preset.name if loaded.preset else None,
        "params": analysis.params,
        "flops": analysis.flops,
        "macs": count_macs(loaded.model, loaded.example_input),
        "units": {"params": PARAMS_LABEL, "flops": FLOPS_LABEL, "macs": MACS_LABEL},
        "groups": [g.to_json() for g in analysis.groups],
        "not_prunable": [{"layer": n.layer, "reason": n.reason} for n in analysis.not_prunable],
        "min_flops_ratio": analysis.min_flops_ratio,
        "min_params_ratio": analysis.min_params_ratio,
        "constraints": {"round_to": step, "min_channels": min_channels, "ignore": list(patterns),
                        "prune_heads": prune_heads},
        "attention": [h.to_json() for h in attention.find(loaded.model).values()],
    }
