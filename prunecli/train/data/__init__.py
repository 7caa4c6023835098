"""Data specs -> train / val / test loaders. Nothing is ever downloaded.

``--data`` accepts:

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), resized to the model's
    input size and repeated to its channels. 20% is held out as the test split (fixed seed).
``imagefolder:DIR``
    ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/*.png`` (torchvision ImageFolder layout);
    ``DIR/val`` is the held-out test split.
``cifar10:DIR`` / ``cifar100:DIR``
    torchvision's on-disk format (``DIR/cifar-10-batches-py`` ...); its test batch is the test split.
``fashion-mnist:DIR`` / ``mnist:DIR``
    the four IDX files (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``, gzipped or not) in DIR
    or in torchvision's ``DIR/FashionMNIST/raw/`` (``DIR/MNIST/raw/``) layout; t10k is the test split.
    Debian ships Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` puts it in
    ``/usr/share/datasets/fashion-mnist``.
``file.py:factory``
    a user function returning ``(train_loader, val_loader)`` or ``(train, val, test)`` loaders.
``synthetic[:N]``
    N random images with random labels (default 256), for data-free runs and tests.

Selection (best epoch, sensitivity, learned ratios) uses a **validation split carved from the
training data** (``val_fraction``, default 10%, fixed seed); the test split is only reported.
"""

from __future__ import annotations

import re
from pathlib import Path

from prunecli.core.errors import UsageError
from prunecli.train.data.loaders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_SYNTHETIC,
    SPLIT_SEED,
    DataConfig,
    DataFault,
    Loaders,
    _loaders,
    available_cpus,
    check_classes,
    loader_workers,
    make_loader,
    shard,
)
from prunecli.train.data.readers.cifar import _cifar
from prunecli.train.data.readers.digits import _digits, digits_tensors
from prunecli.train.data.readers.factory import _factory
from prunecli.train.data.readers.idx import IDX_KINDS, _idx, idx_arrays, read_idx
from prunecli.train.data.readers.imagefolder import (
    ImageReader,
    _image_transforms,
    _imagefolder,
    eval_resize,
)
from prunecli.train.data.readers.synthetic import _synthetic

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SPLIT_SEED", "DataConfig", "DataFault", "ImageReader", "Loaders",
           "_image_transforms", "_loaders", "available_cpus", "check_classes", "digits_tensors", "eval_resize", "idx_arrays", "load_data",
           "loader_workers", "make_loader", "read_idx", "shard"]


def load_data(config: DataConfig, input_shape, *, num_classes: int = 10, seed: int = 0) -> Loaders:
    """Loaders for ``config.spec`` at the model's ``input_shape`` (training on ``config.train_subset`` images of the
    training split when set: :func:`train_subset`)."""
    loaders = _load(config, input_shape, num_classes, seed)
    return train_subset(loaders, config, seed) if config.train_subset else loaders


def train_subset(loaders: Loaders, config: DataConfig, seed: int) -> Loaders:
    """``loaders`` training on a fixed subset of ``config.train_subset`` images of their training split: the first
    of one permutation drawn with the split's seed, so every --seed (and every method compared) trains on the same
    images; validation and test stay whole. A subset as large as the split is the split."""
    import dataclasses

    import torch

    train = loaders.train.dataset
    if config.train_subset >= len(train):
        return loaders
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    subset = torch.utils.data.Subset(train, order[:config.train_subset].tolist())
    workers = loaders.train.num_workers
    return dataclasses.replace(loaders, train=make_loader(subset, config, train=True, seed=seed, workers=workers))


def _load(config: DataConfig, input_shape, num_classes: int, seed: int) -> Loaders:
    spec = config.spec
    if spec == "digits":
        return _digits(config, input_shape, seed)
    match = re.fullmatch(r"synthetic(?::(\d+))?", spec)
    if match:
        count = int(match.group(1) or 256)
        if count < MIN_SYNTHETIC:
            raise UsageError(f"--data {spec}: synthetic:N needs N >= {MIN_SYNTHETIC} images (train and validation splits)")
        return _synthetic(count, config, input_shape, num_classes, seed)
    kind, _, rest = spec.partition(":")
    if kind == "imagefolder" and rest:
        return _imagefolder(Path(rest), config, input_shape, seed)
    if kind in ("cifar10", "cifar100") and rest:
        return _cifar(kind, Path(rest), config, input_shape, seed)
    if kind in IDX_KINDS and rest:
        return _idx(kind, Path(rest), config, input_shape, seed)
    if re.match(r"^.+\.py:[A-Za-z_]\w*$", spec) or re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", spec):
        return _factory(spec, config, input_shape)
    raise UsageError(
        f"--data {spec!r} is not a data spec; use digits, imagefolder:DIR, cifar10:DIR, cifar100:DIR, fashion-mnist:DIR, mnist:DIR, file.py:factory or synthetic[:N]"
    )
