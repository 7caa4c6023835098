"""The model as `prune` sees it: --ignore patterns (each must name a module) plus the preset's, --round-to or the
preset's, and the channel groups those leave prunable (the graph stage, bounded by the caller)."""

from __future__ import annotations

from prunecli.artifacts.load import LoadedModel
from prunecli.core.errors import UsageError
from prunecli.graph.groups import analyse


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
