"""Flags -> the configs the stages take. Each builder constructs one frozen config; its ValueError becomes exit 2
through :func:`prunecli.cli._errors.usage`, with the config's field names spelled as this command's flags."""

from __future__ import annotations

from typing import Optional

from prunecli.cli._errors import usage
from prunecli.core.errors import UsageError


def budget(metric: str, text: Optional[str]):
    if text is None:
        return None
    from prunecli.plan.targets import BudgetTarget

    with usage():
        return BudgetTarget.parse(metric, text)


def latency_target(text: Optional[str]):
    if text is None:
        return None
    from prunecli.plan.targets import LatencyTarget

    with usage():
        return LatencyTarget.parse(text)


def latency_settings(provider: str, threads: Optional[int], batch: Optional[int], stat: str):
    from prunecli.plan.targets import LatencySettings

    with usage({"--batch": "--latency-batch"}):
        return LatencySettings(provider=provider, threads=threads, batch=batch, stat=stat)


def allocation(name: Optional[str], *, latency: bool, max_group_prune: float, search_epochs: int, levels: str,
               metric: str, batches: int):
    """The allocation config ``--allocation NAME`` selects, from the flags that configure it (no name: ``latency``
    with a latency budget, else ``uniform``). --max-group-prune is checked whichever allocation uses it."""
    from prunecli.core.checks import require_fraction

    with usage():
        require_fraction("--max-group-prune", max_group_prune)
    name = name or ("latency" if latency else "uniform")
    from prunecli.plan.allocators import (
        ALLOCATORS,
        Global,
        Latency,
        Learned,
        Sensitivity,
    )

    kind = ALLOCATORS.config(name)  # an unknown name: the registry's helpful miss
    with usage({"--levels": "--sensitivity-levels", "--metric": "--sensitivity-metric",
                "--batches": "--sensitivity-batches"}):
        if kind is Sensitivity:
            return Sensitivity(levels=Sensitivity.parse_levels(levels), metric=metric, batches=batches)
        if kind is Learned:
            return Learned(epochs=search_epochs)
        if kind in (Global, Latency):
            return kind(max_group_prune=max_group_prune)
        return kind()


def schedule(name: str, agp_steps: int):
    """The schedule config ``--schedule NAME`` selects."""
    from prunecli.pipeline.schedules import SCHEDULES, Agp

    kind = SCHEDULES.config(name)
    with usage():
        return Agp(steps=agp_steps) if kind is Agp else kind()


def prune_config(**kwargs):
    from prunecli.pipeline.config import PruneConfig

    with usage():
        return PruneConfig(**kwargs)


def quantize_config(kind, data, calibration, calibration_batches, max_drop, require, reduce_range="auto"):
    if kind not in ("none", "int8"):
        raise UsageError(f"--quantize {kind!r} is not one of none, int8")
    if kind == "none":
        return None
    if data is None:
        raise UsageError("--quantize int8 calibrates and checks the INT8 model on data: pass --data SPEC")
    from prunecli.runtime.quantize import QuantizeConfig

    with usage():
        return QuantizeConfig(calibration=calibration, calibration_batches=calibration_batches, max_drop=max_drop,
                              require=require, reduce_range=reduce_range)


def finetune_config(**kwargs):
    from prunecli.train.finetune import FinetuneConfig

    with usage():
        return FinetuneConfig(**kwargs)


def data_loaders(spec, batch_size, workers, loaded, seed, skip_bad_images=False, placement=None, train_subset=None):
    """--data read for ``loaded``: its input shape and crop, and as many classes as it has logits."""
    from prunecli.train.data import DataConfig, check_classes, load_data

    with usage():
        config = DataConfig(spec=spec, batch_size=batch_size, workers=workers, skip_bad_images=skip_bad_images,
                            pin_memory=bool(placement and placement.pin_memory),
                            crop_pct=loaded.preset.crop_pct if loaded.preset else 0.875, train_subset=train_subset)
    outputs = loaded.output_classes()
    loaders = load_data(config, loaded.input_shape, seed=seed, num_classes=outputs or 10)
    check_classes(loaders, outputs, spec, loaded.display_name)
    return loaders


def compare_methods(text: str, has_latency: bool, epochs: int, search_epochs, max_group_prune, levels, metric, batches):
    """--methods -> Method configs; `latency` added with a latency budget. An unknown allocation or criterion lists
    the choices (exit 2)."""
    from prunecli.core.errors import UsageError
    from prunecli.pipeline.compare import Method
    from prunecli.plan.allocators.learned import DEFAULT_SEARCH_EPOCHS
    from prunecli.plan.criteria import CRITERIA

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError("--methods: give at least one allocation[:criterion], e.g. uniform:l1,global:l1")
    if has_latency and not any(n.split(":")[0] == "latency" for n in names):
        names.append("latency")
    search = search_epochs if search_epochs is not None else max(1, min(DEFAULT_SEARCH_EPOCHS, epochs - 1))
    out = []
    for name in names:
        name_of_allocation, _, criterion = name.partition(":")
        try:
            config = allocation(name_of_allocation, latency=False, max_group_prune=max_group_prune,
                                search_epochs=search, levels=levels, metric=metric, batches=batches)
            CRITERIA.get(criterion or "l1")
        except UsageError as exc:
            raise UsageError(f"--methods {name}: {exc}") from None
        if name_of_allocation == "learned" and criterion:
            raise UsageError(f"--methods {name}: learned keeps the channels its search scores highest; write `learned`")
        label = name_of_allocation if name_of_allocation == "learned" else f"{name_of_allocation}:{criterion or 'l1'}"
        if any(m.name == label for m in out):
            continue
        out.append(Method(label, config, criterion or "l1"))
    return tuple(out)
