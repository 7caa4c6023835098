"""--data fashion-mnist:DIR and mnist:DIR: LeCun's IDX files, gzipped or not, in DIR or torchvision's raw/ layout."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from prunecli.core.errors import UsageError
from prunecli.train.data import DataConfig, DataFault, load_data

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0 0 0x08 ndim, big-endian dims, data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_idx(folder: Path, *, gz: bool, n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict:
    """Tiny MNIST-format files in ``folder``; returns the arrays written (images N x 28 x 28, labels N)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, array in zip(NAMES[split], (images, labels)):
            data = idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize("kind,layout,gz", [("fashion-mnist", "flat", True), ("fashion-mnist", "torchvision", False),
                                            ("mnist", "torchvision", True), ("mnist", "flat", False)])
def test_idx_files_load_in_both_layouts_gzipped_or_not(tmp_path, kind, layout, gz):
    root = tmp_path / "data"
    folder = root if layout == "flat" else root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[kind] / "raw"
    written = write_idx(folder, gz=gz)
    loaders = load_data(DataConfig(f"{kind}:{root}", batch_size=100), (1, 1, 28, 28))
    assert loaders.describe() == {"spec": f"{kind}:{root}", "train": 36, "val": 4, "test": 12, "num_classes": 10,
                                  "skipped_images": []}
    images, labels = next(iter(loaders.test))  # the test split is t10k, in file order, scaled to [-1, 1]
    expected = torch.from_numpy(written["test"][0]).float().unsqueeze(1) / 255.0 * 2 - 1
    assert torch.allclose(images, expected, atol=1e-6)
    assert labels.tolist() == written["test"][1].tolist()
    train_labels = sorted(int(y) for _, ys in loaders.train for y in ys)
    val_labels = sorted(int(y) for _, ys in loaders.val for y in ys)
    assert sorted(train_labels + val_labels) == sorted(written["train"][1].tolist())  # train/val partition the file


def test_grey_images_are_resized_and_repeated_to_the_models_input(tmp_path):
    write_idx(tmp_path / "d", gz=False)
    loaders = load_data(DataConfig(f"mnist:{tmp_path / 'd'}", batch_size=5), (1, 3, 16, 16))
    images, _ = next(iter(loaders.test))
    assert images.shape == (5, 3, 16, 16)
    assert torch.equal(images[:, 0], images[:, 2])


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("gz", [True, False])
def test_a_truncated_file_is_named(tmp_path, gz):
    write_idx(tmp_path / "d", gz=gz)
    victim = tmp_path / "d" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    _cut(victim, victim.stat().st_size - 100)
    with pytest.raises(DataFault, match="train-images-idx3-ubyte.* (truncated|cannot be read)"):
        load_data(DataConfig(f"fashion-mnist:{tmp_path / 'd'}"), (1, 1, 28, 28))


@pytest.mark.parametrize("damage,message", [
    ("header", "is not an IDX file"),
    ("count", "12 images but .* 11 labels"),
    ("label", "has label 12"),
    ("missing", r"t10k-labels-idx1-ubyte\[.gz\] not found"),
])
def test_malformed_files_are_refused_naming_them(tmp_path, damage, message):
    folder = tmp_path / "d"
    write_idx(folder, gz=False)
    labels = folder / "t10k-labels-idx1-ubyte"
    if damage == "header":
        labels.write_bytes(b"\x1f\x8b" + labels.read_bytes()[2:])
    elif damage == "count":
        labels.write_bytes(idx_bytes((np.arange(11) % 10).astype(np.uint8)))
    elif damage == "label":
        labels.write_bytes(idx_bytes(np.full(12, 12, dtype=np.uint8)))
    else:
        labels.unlink()
    with pytest.raises(UsageError, match=message):
        load_data(DataConfig(f"mnist:{folder}"), (1, 1, 28, 28))


def test_a_missing_directory_says_how_to_get_fashion_mnist(tmp_path):
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(f"fashion-mnist:{tmp_path / 'nope'}"), (1, 1, 28, 28))


def test_prune_on_fashion_mnist_files(cli, tmp_path):
    write_idx(tmp_path / "fm", gz=True, n_train=60, n_test=20)
    inputs = sorted((tmp_path / "fm").iterdir())
    before = {p: p.read_bytes() for p in inputs}
    result = cli("prune", "tinynets:tiny_resnet:num_classes=10", "--input-shape", "1,3,16,16",
                 "--data", f"fashion-mnist:{tmp_path / 'fm'}", "--flops", "0.5", "--epochs", "1", "--batch-size", "16",
                 "--no-latency", "--out", tmp_path / "o", "--json")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["config"]["data"]["test"] == 20 and report["config"]["data"]["train"] == 54
    assert report["accuracy"]["split"] == "test"
    assert {p: p.read_bytes() for p in sorted((tmp_path / "fm").iterdir())} == before  # inputs untouched


def test_bad_idx_data_is_exit_2_before_work(cli, tmp_path):
    write_idx(tmp_path / "fm", gz=False)
    _cut(tmp_path / "fm" / "t10k-images-idx3-ubyte", 50)
    result = cli("prune", "tinynets:tiny_resnet:num_classes=10", "--input-shape", "1,3,16,16",
                 "--data", f"fashion-mnist:{tmp_path / 'fm'}", "--flops", "0.5", "--out", tmp_path / "o")
    assert result.code == 2
    assert "t10k-images-idx3-ubyte is truncated" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
