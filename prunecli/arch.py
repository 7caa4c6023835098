"""Architecture specs: ``torchvision:NAME[:k=v]``, ``file.py:factory[:k=v]``, ``package.module:factory``.

Building from a factory imports and runs that user code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from .errors import UsageError


def _parse_kwargs(text: str, spec: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise UsageError(
                f"{spec!r}: constructor option {item!r} is not key=value (e.g. torchvision:resnet18:num_classes=10)"
            )
        key, value = item.split("=", 1)
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return kwargs


def arch_name(spec: str | None) -> str | None:
    """The bare architecture name of a spec: ``torchvision:resnet18:num_classes=10`` -> ``resnet18``."""
    if not spec:
        return None
    head, _, rest = spec.partition(":")
    if head == "torchvision":
        return rest.split(":", 1)[0]
    return rest.split(":", 1)[0] or None


def is_arch_spec(text: str) -> bool:
    """True for ``torchvision:NAME``, ``file.py:factory`` and ``package.module:factory`` strings."""
    if text.startswith("torchvision:"):
        return True
    if re.match(r"^.+\.py:[A-Za-z_]\w*(:.*)?$", text):
        return True
    return bool(re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(:.*)?$", text)) and not Path(text).exists()


def absolute_spec(spec: str) -> str:
    """``rel/file.py:factory`` -> ``/abs/rel/file.py:factory``, so bundles rebuild from any directory."""
    match = re.match(r"^(?P<target>.+?\.py)(?P<rest>:.*)$", spec)
    if match and Path(match["target"]).is_file():
        return f"{Path(match['target']).resolve()}{match['rest']}"
    return spec


def build_arch(spec: str, flag: str = "MODEL"):
    """Instantiate the architecture a spec names (random init)."""
    import torch

    if spec.startswith("torchvision:"):
        import torchvision

        name, _, opts = spec[len("torchvision:") :].partition(":")
        kwargs = _parse_kwargs(opts, spec)
        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean torchvision:{close[0]}?)" if close else ""
            raise UsageError(
                f"{flag} {spec!r}: torchvision has no classification model {name!r}{hint}; "
                "see torchvision.models.list_models()"
            )
        try:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except TypeError as exc:
            raise UsageError(f"{flag} {spec!r}: bad constructor option: {exc}") from exc
        return model

    model = build_factory_object(spec, flag)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{flag} {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_factory_object(spec: str, flag: str):
    """Call ``file.py:factory[:k=v]`` or ``package.module:factory[:k=v]`` and return what it returns.

    This imports and runs user code, as the README says.
    """
    match = re.match(r"^(?P<target>.+?):(?P<factory>[A-Za-z_]\w*)(?::(?P<opts>.*))?$", spec)
    if not match:
        raise UsageError(
            f"{flag} {spec!r} is not an architecture spec; use torchvision:NAME, file.py:factory or package.module:factory"
        )
    target, factory_name, opts = match["target"], match["factory"], match["opts"] or ""
    kwargs = _parse_kwargs(opts, spec)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"{flag} {spec!r}: factory file {target} not found")
        mod_name = f"prunecli_user_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # user code: report its failure as an input error
            raise UsageError(f"{flag} {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"{flag} {spec!r}: cannot import module {target!r}: {exc}") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UsageError(f"{flag} {spec!r}: {target} has no callable {factory_name!r}")
    try:
        return factory(**kwargs)
    except Exception as exc:
        raise UsageError(f"{flag} {spec!r}: {factory_name}() raised {type(exc).__name__}: {exc}") from exc
