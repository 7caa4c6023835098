"""``cifar10:DIR`` / ``cifar100:DIR``: torchvision's on-disk batches, read with a numpy-only unpickler."""

from __future__ import annotations

from pathlib import Path

from prunecli.core.errors import UsageError
from prunecli.train.data.loaders import DataConfig, Loaders, _loaders, _scaled, _split


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
