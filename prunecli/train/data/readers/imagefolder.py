"""``imagefolder:DIR``: torchvision's ImageFolder layout, images decoded with PIL (bad ones named or skipped)."""

from __future__ import annotations

from pathlib import Path

from prunecli.core.errors import UsageError
from prunecli.models.formats import first_line
from prunecli.train.data.loaders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataConfig,
    DataFault,
    Loaders,
    _loaders,
    _split,
)


def eval_resize(input_shape, crop_pct: float) -> int:
    """The shorter side evaluation images are resized to before the centre crop (256 for 224 at 0.875)."""
    return int(max(input_shape[-2:]) / crop_pct)


def _image_transforms(input_shape, train: bool, crop_pct: float = 0.875):
    """Training: random resized crop and flip. Evaluation: torchvision's recipe for its weights
    (``transforms._presets.ImageClassification``): resize the shorter side to size / crop_pct (bilinear,
    antialiased), centre-crop to the input size."""
    from torchvision import transforms

    size = tuple(input_shape[-2:])
    grey = input_shape[1] == 1
    steps = [transforms.Grayscale(1)] if grey else [transforms.Lambda(_rgb)]
    if train:
        steps += [transforms.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), transforms.RandomHorizontalFlip()]
    else:
        steps += [transforms.Resize(eval_resize(input_shape, crop_pct), antialias=True), transforms.CenterCrop(size)]
    mean, std = ((0.5,), (0.5,)) if grey else (IMAGENET_MEAN, IMAGENET_STD)
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def _rgb(image):
    return image.convert("RGB")


class ImageReader:
    """ImageFolder's loader, but a file that fails to decode is a DataFault naming it (picklable for workers)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __call__(self, path: str):
        from PIL import Image

        try:
            with open(path, "rb") as fh:
                image = Image.open(fh)
                image.load()
                return image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataFault(f"--data {self.spec}: {path} cannot be decoded ({first_line(exc)}); fix or remove it, "
                            "or pass --skip-bad-images") from exc


def _drop_bad_images(datasets_: list, reader: ImageReader) -> tuple[str, ...]:
    """Decode every image once; remove those that fail from each dataset (same file list in each)."""
    bad = set()
    for dataset in datasets_:
        for path, _ in dataset.samples:
            if path in bad:
                continue
            try:
                reader(path)
            except DataFault:
                bad.add(path)
    for dataset in datasets_:
        dataset.samples = [(p, c) for p, c in dataset.samples if p not in bad]
        dataset.imgs = dataset.samples
        dataset.targets = [c for _, c in dataset.samples]
    return tuple(sorted(bad))


def _imagefolder(root: Path, config: DataConfig, input_shape, seed: int) -> Loaders:
    import torch
    from torchvision import datasets

    spec = f"imagefolder:{root}"
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise UsageError(f"--data {spec}: {root / sub} is missing; expected DIR/train/<class>/... and DIR/val/<class>/...")
    reader = ImageReader(spec)
    try:
        evaluation = _image_transforms(input_shape, False, config.crop_pct)
        train_full = datasets.ImageFolder(str(root / "train"), transform=_image_transforms(input_shape, True), loader=reader)
        eval_train = datasets.ImageFolder(str(root / "train"), transform=evaluation, loader=reader)
        test = datasets.ImageFolder(str(root / "val"), transform=evaluation, loader=reader)
    except (FileNotFoundError, OSError) as exc:
        raise UsageError(f"--data {spec}: {first_line(exc)}") from exc
    if train_full.classes != test.classes:
        raise UsageError(f"--data {spec}: train and val have different classes")
    skipped = _drop_bad_images([train_full, eval_train], reader) + _drop_bad_images([test], reader) \
        if config.skip_bad_images else ()
    if len(train_full) < 2 or len(test) < 1:
        raise UsageError(f"--data {spec}: too few readable images (train {len(train_full)}, val {len(test)})")
    train_idx, val_idx = _split(range(len(train_full)), config.val_fraction)
    train = torch.utils.data.Subset(train_full, list(train_idx))
    val = torch.utils.data.Subset(eval_train, list(val_idx))  # validation without augmentation
    return Loaders(*_loaders(train, val, test, config, seed, decodes=True), num_classes=len(train_full.classes),
                   name=spec, skipped=skipped)
