"""``digits``: scikit-learn's bundled 8x8 digits, resized to the model's input and repeated to its channels."""

from __future__ import annotations

import functools

from prunecli.train.data.loaders import (
    SPLIT_SEED,
    DataConfig,
    Loaders,
    _loaders,
    _split,
)


@functools.lru_cache(maxsize=1)
def _bundled():
    """scikit-learn's digits as read from its bundled file (read once per process: it parses a CSV, about 0.5 s)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def digits_tensors(input_shape):
    """(images, labels) of scikit-learn's digits at the model's input size and channels, scaled to [0, 1]."""
    import torch

    raw, target = _bundled()
    images = torch.tensor(raw, dtype=torch.float32).unsqueeze(1) / 16.0
    channels, height, width = input_shape[1], input_shape[-2], input_shape[-1]
    images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    images = (images - 0.5) / 0.5
    return images.repeat(1, channels, 1, 1), torch.tensor(target, dtype=torch.long)


def _digits(config: DataConfig, input_shape, seed: int) -> Loaders:
    import torch

    images, labels = digits_tensors(input_shape)
    full = torch.utils.data.TensorDataset(images, labels)
    n_test = int(round(len(full) * 0.2))
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    rest, test = torch.utils.data.random_split(full, [len(full) - n_test, n_test], generator=generator)
    train, val = _split(rest, config.val_fraction)
    return Loaders(*_loaders(train, val, test, config, seed), num_classes=10, name="digits")
