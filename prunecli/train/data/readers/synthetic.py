"""``synthetic[:N]``: N random images with random labels, for data-free runs and tests."""

from __future__ import annotations

from prunecli.train.data.loaders import (
    SPLIT_SEED,
    DataConfig,
    Loaders,
    _loaders,
    _split,
)


def _synthetic(count: int, config: DataConfig, input_shape, num_classes: int, seed: int) -> Loaders:
    import torch

    generator = torch.Generator().manual_seed(SPLIT_SEED)
    images = torch.randn(count, *input_shape[1:], generator=generator)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    full = torch.utils.data.TensorDataset(images, labels)
    train, val = _split(full, max(config.val_fraction, 0.2))
    return Loaders(*_loaders(train, val, None, config, seed), num_classes=num_classes, name=f"synthetic:{count}")
