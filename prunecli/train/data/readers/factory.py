"""``file.py:factory``: loaders built by the user's own code (typed on the command line, never read from a file)."""

from __future__ import annotations

from prunecli.core.errors import UsageError
from prunecli.train.data.loaders import DataConfig, Loaders, _check_loader


def _factory(spec: str, config: DataConfig, input_shape) -> Loaders:
    from prunecli.models.arch import build_factory_object

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
