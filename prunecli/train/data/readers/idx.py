"""``fashion-mnist:DIR`` / ``mnist:DIR``: the four IDX files, gzipped or not, flat or in torchvision's layout."""

from __future__ import annotations

from pathlib import Path

from prunecli.core.errors import UsageError
from prunecli.models.formats import first_line
from prunecli.train.data.loaders import (
    DataConfig,
    DataFault,
    Loaders,
    _loaders,
    _scaled,
    _split,
)

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
