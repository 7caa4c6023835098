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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .formats import first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_SEED = 1234  # the train/val/test split never depends on --seed


MIN_SYNTHETIC = 10


class DataFault(UsageError):
    """A data file that cannot be read (exit 2), named; DataLoader workers' re-raised copies keep the one line."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught DataFault"):  # torch's ExceptionWrapper: "Caught ... Original Traceback ..."
            lines = [line for line in message.splitlines() if "DataFault: " in line]
            message = lines[-1].split("DataFault: ", 1)[1] if lines else message.splitlines()[0]
        super().__init__(message)


@dataclass(frozen=True)
class DataConfig:
    spec: str
    batch_size: int = 64
    workers: int | None = None  # None: auto (see loader_workers)
    val_fraction: float = 0.1
    skip_bad_images: bool = False  # imagefolder: decode every image first and leave out those that fail
    pin_memory: bool = False  # page-locked batches for fast copies to a GPU
    crop_pct: float = 0.875  # imagefolder evaluation: resize to size / crop_pct, then centre-crop (torchvision's)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size} must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers {self.workers} must be >= 0")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction {self.val_fraction} must be in (0, 0.5)")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct {self.crop_pct} must be in (0, 1]")


@dataclass
class Loaders:
    train: Any
    val: Any
    test: Any | None
    num_classes: int
    name: str
    skipped: tuple[str, ...] = ()  # files left out by --skip-bad-images

    def describe(self) -> dict:
        size = lambda loader: len(loader.dataset) if loader is not None and hasattr(loader, "dataset") else None  # noqa: E731
        return {"spec": self.name, "train": size(self.train), "val": size(self.val), "test": size(self.test),
                "num_classes": self.num_classes, "skipped_images": list(self.skipped)}


def _split(dataset, fraction: float):
    import torch

    n = len(dataset)
    n_val = max(1, int(round(n * fraction)))
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    train, val = torch.utils.data.random_split(dataset, [n - n_val, n_val], generator=generator)
    return train, val


def available_cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def loader_workers(config: DataConfig, decodes: bool) -> int:
    """``--workers`` or, by default, what the machine has: none for tensors already in memory (digits, IDX,
    CIFAR, synthetic: a worker would only copy them), else the CPUs this process may use, shared among the
    processes torchrun started on this machine, at most 8."""
    import os

    if config.workers is not None:
        return config.workers
    if not decodes:
        return 0
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, available_cpus() // max(1, per_node)))


def make_loader(dataset, config: DataConfig, *, train: bool, seed: int, workers: int, rank: int = 0, world_size: int = 1):
    """A DataLoader over ``dataset``. Training batches come from a DistributedSampler (shuffled by ``seed`` and
    the epoch; its ``set_epoch`` is called every epoch) in every run, one process or many, so that N processes
    with batch B see exactly the samples one process with batch N*B sees. Evaluation shards are disjoint and
    unpadded: every sample is counted once."""
    import torch

    if train:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                                      seed=seed, drop_last=False)
    else:
        sampler = list(range(rank, len(dataset), world_size)) if world_size > 1 else None
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=workers,
                                       pin_memory=config.pin_memory, persistent_workers=workers > 0)


def _loaders(train_set, val_set, test_set, config: DataConfig, seed: int, decodes: bool = False):
    workers = loader_workers(config, decodes)
    make = lambda ds, train: make_loader(ds, config, train=train, seed=seed, workers=workers)  # noqa: E731
    return make(train_set, True), make(val_set, False), (make(test_set, False) if test_set is not None else None)


def shard(loaders: "Loaders", rank: int, world_size: int, seed: int) -> "Loaders":
    """This rank's loaders under torchrun: training through a DistributedSampler, evaluation on a disjoint,
    unpadded share of each split (sums are reduced across ranks, so every sample counts once). A factory's
    loaders are rebuilt from their datasets, keeping batch size, workers and collate function."""
    import dataclasses

    import torch

    if world_size <= 1:
        return loaders

    def rebuild(loader, train: bool):
        if loader is None:
            return None
        dataset = getattr(loader, "dataset", None)
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
            raise UsageError(f"--data {loaders.name}: under torchrun each process needs its share of the data; "
                             "the factory's loaders must wrap map-style datasets (not IterableDataset)")
        config = DataConfig(spec=loaders.name, batch_size=loader.batch_size or 1,
                            pin_memory=bool(getattr(loader, "pin_memory", False)))
        rebuilt = make_loader(dataset, config, train=train, seed=seed, workers=loader.num_workers, rank=rank,
                              world_size=world_size)
        rebuilt.collate_fn = loader.collate_fn
        return rebuilt

    return dataclasses.replace(loaders, train=rebuild(loaders.train, True), val=rebuild(loaders.val, False),
                               test=rebuild(loaders.test, False))


def digits_tensors(input_shape):
    """(images, labels) of scikit-learn's digits at the model's input size and channels, scaled to [0, 1]."""
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    channels, height, width = input_shape[1], input_shape[-2], input_shape[-1]
    images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    images = (images - 0.5) / 0.5
    return images.repeat(1, channels, 1, 1), torch.tensor(bunch.target, dtype=torch.long)


def _digits(config: DataConfig, input_shape, seed: int) -> Loaders:
    import torch

    images, labels = digits_tensors(input_shape)
    full = torch.utils.data.TensorDataset(images, labels)
    n_test = int(round(len(full) * 0.2))
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    rest, test = torch.utils.data.random_split(full, [len(full) - n_test, n_test], generator=generator)
    train, val = _split(rest, config.val_fraction)
    return Loaders(*_loaders(train, val, test, config, seed), num_classes=10, name="digits")


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


class _NumpyOnlyUnpickler:
    """Unpickles CIFAR's python batches allowing only numpy array reconstruction (no arbitrary code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    @classmethod
    def load(cls, path: Path):
        import pickle

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) in cls.ALLOWED:
                    return super().find_class(module, name)
                raise pickle.UnpicklingError(f"{path} refers to {module}.{name}, which a CIFAR batch never needs")

        with open(path, "rb") as fh:
            return Restricted(fh, encoding="latin1").load()


def _scaled(images, input_shape):
    """uint8 NCHW images -> float in [-1, 1] at the model's height and width (bilinear)."""
    import torch

    x = images.float() / 255.0
    if tuple(input_shape[-2:]) != tuple(x.shape[-2:]):
        x = torch.nn.functional.interpolate(x, size=tuple(input_shape[-2:]), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def _cifar(kind: str, root: Path, config: DataConfig, input_shape, seed: int) -> Loaders:
    """torchvision's CIFAR python layout, read with a numpy-only unpickler (torchvision's loader runs any pickle)."""
    import pickle

    import numpy as np
    import torch

    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
    test_files = ["test_batch"] if kind == "cifar10" else ["test"]
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"--data {kind}:{root}: {folder / missing[0]} not found (prunecli never downloads; "
                         "put torchvision's extracted CIFAR folder there)")

    def read(files):
        images, labels = [], []
        for name in files:
            try:
                batch = _NumpyOnlyUnpickler.load(folder / name)
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(int(v) for v in batch[label_key])
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
                raise UsageError(f"--data {kind}:{root}: {folder / name} is not a CIFAR batch ({exc})") from exc
        x = _scaled(torch.from_numpy(np.concatenate(images)), input_shape)
        return torch.utils.data.TensorDataset(x, torch.tensor(labels, dtype=torch.long))

    train_full, test = read(train_files), read(test_files)
    train, val = _split(train_full, config.val_fraction)
    num_classes = 10 if kind == "cifar10" else 100
    return Loaders(*_loaders(train, val, test, config, seed), num_classes=num_classes, name=f"{kind}:{root}")


IDX_KINDS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # spec prefix -> torchvision's folder name
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_paths(kind: str, root: Path) -> dict[str, Path]:
    """IDX file name -> its path, in DIR itself or torchvision's DIR/<Name>/raw (an uncompressed copy first)."""
    spec = f"{kind}:{root}"
    if not root.is_dir():
        raise UsageError(f"--data {spec}: {root} is not a directory (prunecli never downloads; "
                         + ("apt-get install dataset-fashion-mnist puts it in /usr/share/datasets/fashion-mnist)"
                            if kind == "fashion-mnist" else "put the four IDX files there)"))
    names = [name for pair in IDX_FILES.values() for name in pair]
    found = {}
    for folder in (root, root / IDX_KINDS[kind] / "raw"):
        found = {}
        for name in names:
            path = next((c for c in (folder / name, folder / (name + ".gz")) if c.is_file()), None)
            if path is not None:
                found[name] = path
        if len(found) == len(names):
            return found
        if found:  # a partial set: name what is missing there
            break
    missing = next(name for name in names if name not in found)
    folder = next(iter(found.values())).parent if found else root
    raise UsageError(f"--data {spec}: {folder / missing}[.gz] not found; DIR must hold the four IDX files "
                     f"(train-/t10k- images-idx3 and labels-idx1, gzipped or not) or {IDX_KINDS[kind]}/raw/ with them")


def read_idx(path: Path, spec: str, ndim: int):
    """An IDX array (LeCun's format: magic 0 0 type ndim, big-endian int32 dims, then the data), checked whole."""
    import gzip
    import zlib

    import numpy as np

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a cut .gz is an EOFError
        raise DataFault(f"--data {spec}: {path} cannot be read ({first_line(exc) or type(exc).__name__}); "
                        "replace it with an intact copy") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] != ndim:
        raise DataFault(f"--data {spec}: {path} is not an IDX file with {ndim} dimension(s) "
                        f"(header {raw[:4].hex() or 'empty'}); replace it with an intact copy")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataFault(f"--data {spec}: {path} is truncated (its header is cut); replace it with an intact copy")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = head + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataFault(f"--data {spec}: {path} is {state} ({len(raw)} bytes, dims {dims} need {expected}); "
                        "replace it with an intact copy")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims)


def idx_arrays(kind: str, root: Path) -> dict:
    """{"train": (images uint8 NxHxW, labels int64 N), "test": (...)} of an MNIST-format dataset, checked."""
    import numpy as np

    spec = f"{kind}:{root}"
    paths = _idx_paths(kind, root)
    arrays = {}
    for split, (image_name, label_name) in IDX_FILES.items():
        image_path, label_path = paths[image_name], paths[label_name]
        images, labels = read_idx(image_path, spec, 3), read_idx(label_path, spec, 1)
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DataFault(f"--data {spec}: {image_path if images.dtype != np.uint8 else label_path} "
                            "does not hold unsigned bytes as MNIST's IDX files do")
        if len(images) != len(labels) or len(images) == 0:
            raise DataFault(f"--data {spec}: {image_path} holds {len(images)} images but {label_path} "
                            f"{len(labels)} labels; the two files must come from the same release")
        if int(labels.max()) > 9:
            raise DataFault(f"--data {spec}: {label_path} has label {int(labels.max())}; MNIST formats have classes 0-9")
        arrays[split] = (images, labels.astype(np.int64))
    return arrays


def _idx_tensors(images, labels, input_shape):
    import torch

    x = _scaled(torch.from_numpy(images.copy()).unsqueeze(1), input_shape)
    if input_shape[1] != 1:
        x = x.expand(-1, input_shape[1], -1, -1).contiguous()
    return torch.utils.data.TensorDataset(x, torch.from_numpy(labels))


def _idx(kind: str, root: Path, config: DataConfig, input_shape, seed: int) -> Loaders:
    """MNIST / Fashion-MNIST IDX files -> loaders; grey images are repeated to the model's channels."""
    arrays = idx_arrays(kind, root)
    train_full = _idx_tensors(*arrays["train"], input_shape)
    test = _idx_tensors(*arrays["test"], input_shape)
    train, val = _split(train_full, config.val_fraction)
    return Loaders(*_loaders(train, val, test, config, seed), num_classes=10, name=f"{kind}:{root}")


def _synthetic(count: int, config: DataConfig, input_shape, num_classes: int, seed: int) -> Loaders:
    import torch

    generator = torch.Generator().manual_seed(SPLIT_SEED)
    images = torch.randn(count, *input_shape[1:], generator=generator)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    full = torch.utils.data.TensorDataset(images, labels)
    train, val = _split(full, max(config.val_fraction, 0.2))
    return Loaders(*_loaders(train, val, None, config, seed), num_classes=num_classes, name=f"synthetic:{count}")


def _check_loader(loader, spec: str, which: str, input_shape) -> None:
    """A loader must be re-iterable (not a one-shot generator) and yield (images, labels) batches that fit."""
    import torch

    if not hasattr(loader, "__iter__") or iter(loader) is loader:
        raise UsageError(f"--data {spec}: the {which} loader is {type(loader).__name__}, not a re-iterable loader; "
                         "return torch.utils.data.DataLoader objects")
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise UsageError(f"--data {spec}: the {which} loader yields no batch") from None
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"--data {spec}: the {which} loader fails on its first batch "
                         f"({type(exc).__name__}: {first_line(exc)})") from exc
    ok = isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch)
    if not ok:
        raise UsageError(f"--data {spec}: the {which} loader must yield (images, labels) tensor pairs, "
                         f"got {type(batch).__name__}")
    images, labels = batch
    if tuple(images.shape[1:]) != tuple(input_shape[1:]):
        raise UsageError(f"--data {spec}: {which} images are {tuple(images.shape[1:])} but the model takes "
                         f"{tuple(input_shape[1:])}; resize in the factory or pass --input-shape")
    if labels.dtype not in (torch.int64, torch.int32) or labels.dim() != 1:
        raise UsageError(f"--data {spec}: {which} labels must be a 1-D integer tensor of class indices")


def _factory(spec: str, config: DataConfig, input_shape) -> Loaders:
    from .arch import build_factory_object

    result = build_factory_object(spec, "--data")
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise UsageError(f"--data {spec}: the factory must return (train_loader, val_loader) or (train, val, test), "
                         f"not {type(result).__name__}")
    train, val, test = (list(result) + [None])[:3]
    for which, loader in (("train", train), ("val", val), ("test", test)):
        if loader is not None or which != "test":
            _check_loader(loader, spec, which, input_shape)
    num_classes = getattr(train.dataset, "classes", None)
    return Loaders(train, val, test, num_classes=len(num_classes) if num_classes else 0, name=spec)


def load_data(config: DataConfig, input_shape, *, num_classes: int = 10, seed: int = 0) -> Loaders:
    """Loaders for ``config.spec`` at the model's ``input_shape``."""
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
