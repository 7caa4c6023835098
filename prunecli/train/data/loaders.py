"""What every reader returns and shares: the data config, the train/val/test loaders, the fixed splits,
loader workers, torchrun sharding, and the checks on a user's loaders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunecli.core.errors import UsageError
from prunecli.models.formats import first_line

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
    train_subset: int | None = None  # train on a fixed subset of this many training images (same for every --seed)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size} must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers {self.workers} must be >= 0")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction {self.val_fraction} must be in (0, 0.5)")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct {self.crop_pct} must be in (0, 1]")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"--train-subset {self.train_subset} must be >= 1 images")


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


def _scaled(images, input_shape):
    """uint8 NCHW images -> float in [-1, 1] at the model's height and width (bilinear)."""
    import torch

    x = images.float() / 255.0
    if tuple(input_shape[-2:]) != tuple(x.shape[-2:]):
        x = torch.nn.functional.interpolate(x, size=tuple(input_shape[-2:]), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


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


def check_classes(loaders: Loaders, outputs: int | None, spec: str, model: str) -> None:
    """A model with fewer logits than --data has classes cannot be trained or judged on it (exit 2)."""
    if outputs and loaders.num_classes > outputs:
        raise UsageError(f"--data {spec} has {loaders.num_classes} classes but MODEL {model} outputs "
                         f"{outputs} logits; use a model with {loaders.num_classes} outputs (e.g. num_classes="
                         f"{loaders.num_classes} in the architecture spec)")
