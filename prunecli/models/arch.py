"""Architecture specs, and which of them may come from a file.

Two kinds of spec build a model:

*data specs* name an architecture in a model library, with literal options:
    ``torchvision:NAME[:k=v,...]``, ``timm:NAME[:k=v,...]`` (``pip install prunecli[timm]``) and
    ``prunecli:NAME[:k=v,...]`` (the built-in :mod:`prunecli.models.zoo`).
    Building one imports nothing new and calls no code chosen by the spec beyond that constructor.
*code specs* name user code: ``path/file.py:factory[:k=v]`` or ``package.module:factory[:k=v]``.
    Building one **imports and runs that code**.

The rule (README "Security"): a code spec runs only when the user typed it (a command-line argument or a
Python argument). A spec read from a file (a checkpoint's ``arch``, safetensors metadata, a bundle's
``recipe.json``) is data: it must be a data spec, else :func:`build_arch` refuses it with exit 2 and the way
out (pass ``--arch SPEC`` yourself).
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

from prunecli.core.errors import UsageError

DATA_SOURCES = ("torchvision", "timm", "prunecli")
# timm's names contain dots (``vit_base_patch16_224.augreg_in21k``: a pretrained tag) and dashes
# Constructor options that would fetch weights from the network (prunecli never downloads).
DOWNLOAD_KEYS = frozenset({"weights", "weights_backbone", "pretrained", "pretrained_backbone", "progress"})
_LITERAL_STRING = re.compile(r"^[\w.\-]{0,64}$")
_OPTION_KEY = re.compile(r"^[A-Za-z_]\w{0,63}$")
# Constructor options that point the library at a file, directory, URL or config (timm's checkpoint_path,
# pretrained_cfg, cache_dir): refused in every data spec, typed or read from a file.
_FILE_KEY = re.compile(r"path|file|dir|url|cfg", re.IGNORECASE)


def _parse_kwargs(text: str, spec: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise UsageError(
                f"{spec!r}: constructor option {item!r} is not key=value (e.g. torchvision:resnet18:num_classes=10)"
            )
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _literal_options(opts: str, spec: str, origin: str) -> dict[str, Any]:
    """Options of a data spec: identifiers mapped to numbers, booleans, None or short plain strings."""
    kwargs = _parse_kwargs(opts, spec)
    for key, value in kwargs.items():
        if not _OPTION_KEY.match(key):
            raise UsageError(f"{origin} {spec!r}: option name {key!r} is not an identifier")
        if key in DOWNLOAD_KEYS:
            raise UsageError(f"{origin} {spec!r}: option {key!r} would download weights, which prunecli never does; "
                             "drop it and load a local file with --weights FILE")
        if _FILE_KEY.search(key):
            raise UsageError(f"{origin} {spec!r}: option {key!r} would make the library read a file or a config "
                             "(timm's checkpoint_path= unpickles it); load weights with --weights FILE instead")
        plain = value is None or isinstance(value, (bool, int, float)) or (
            isinstance(value, str) and _LITERAL_STRING.match(value))
        if not plain:
            raise UsageError(f"{origin} {spec!r}: option {key}={value!r} is not a literal (numbers, true/false, "
                             "short names only)")
    return kwargs


def arch_name(spec: str | None) -> str | None:
    """The bare architecture name of a spec: ``torchvision:resnet18:num_classes=10`` -> ``resnet18``."""
    if not spec:
        return None
    head, _, rest = spec.partition(":")
    return rest.split(":", 1)[0] or None


def is_data_spec(text: str) -> bool:
    """``torchvision:NAME[...]`` or ``prunecli:NAME[...]``: safe to read from a file."""
    return bool(re.match(rf"^({'|'.join(DATA_SOURCES)}):[A-Za-z_][\w.\-]*(:.*)?$", text))


def is_code_spec(text: str) -> bool:
    """``file.py:factory[...]`` or ``package.module:factory[...]``: runs code."""
    if re.match(r"^.+\.py:[A-Za-z_]\w*(:.*)?$", text):
        return True
    return bool(re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(:.*)?$", text)) and not is_data_spec(text) \
        and not Path(text).exists()


def is_arch_spec(text: str) -> bool:
    """Either kind of spec."""
    return isinstance(text, str) and (is_data_spec(text) or is_code_spec(text))


def _without_pretrained(opts: str) -> tuple[str, bool]:
    """(the options without ``pretrained=True``, whether it was there)."""
    items = [o for o in opts.split(",") if o.strip()]
    kept = [o for o in items if not re.fullmatch(r"\s*pretrained\s*=\s*True\s*", o)]
    return ",".join(kept), len(kept) != len(items)


def structure_spec(spec: str) -> str:
    """The spec a bundle records: the architecture without a typed ``pretrained=True`` (the weights travel in the
    bundle; a recorded spec never downloads)."""
    if not spec.startswith("timm:"):
        return spec
    name, _, opts = spec[len("timm:"):].partition(":")
    kept, _ = _without_pretrained(opts)
    return f"timm:{name}" + (f":{kept}" if kept else "")


def absolute_spec(spec: str) -> str:
    """``rel/file.py:factory`` -> ``/abs/rel/file.py:factory``, so a typed spec means the same from any directory."""
    match = re.match(r"^(?P<target>.+?\.py)(?P<rest>:.*)$", spec)
    if match and Path(match["target"]).is_file():
        return f"{Path(match['target']).resolve()}{match['rest']}"
    return spec


def refuse_code_from_file(spec: Any, origin: str) -> None:
    """Raise unless ``spec`` (read from a file, described by ``origin``) is a data spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"{origin} is {spec!r}, not an architecture spec; pass --arch torchvision:NAME")
    if is_data_spec(spec):
        return
    what = "a Python file to import" if ".py:" in spec else "a module to import"
    raise UsageError(
        f"{origin} is {spec!r}, which names {what}: prunecli never runs code named inside a file. "
        f"If you trust it, pass it yourself: --arch {spec} (Python: arch=...)"
    )


def build_arch(spec: str, flag: str = "MODEL", *, from_file: str | None = None):
    """Instantiate the architecture a spec names (random init).

    ``from_file`` describes where the spec was read (e.g. ``"MODEL m.pt key 'arch'"``); such a spec must be a
    data spec. ``None`` means the user typed it, and a code spec then runs.
    """
    import torch

    origin = from_file or flag
    if from_file is not None:
        refuse_code_from_file(spec, from_file)
    if spec.startswith("torchvision:"):
        return _build_torchvision(spec, origin)
    if spec.startswith("prunecli:"):
        return _build_zoo(spec, origin)
    if spec.startswith("timm:"):
        return _build_timm(spec, origin, typed=from_file is None)
    model = build_factory_object(spec, flag)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{flag} {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _closest(name: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _build_torchvision(spec: str, origin: str):
    import torchvision

    name, _, opts = spec[len("torchvision:"):].partition(":")
    kwargs = _literal_options(opts, spec, origin)
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        hint = _closest(name, known).replace("(did you mean ", "(did you mean torchvision:")
        raise UsageError(f"{origin} {spec!r}: torchvision has no classification model {name!r}{hint}; "
                         "see torchvision.models.list_models()")
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{origin} {spec!r}: bad constructor option: {exc}") from exc


def _build_timm(spec: str, origin: str, typed: bool):
    """``timm:NAME[:k=v]``: timm's constructor with literal options, random init. ``pretrained=True`` (timm then
    downloads the weights from the Hugging Face Hub) only when typed on the command line, never from a file."""
    name, _, opts = spec[len("timm:"):].partition(":")
    pretrained = False
    if typed:  # from a file, pretrained= stays in and _literal_options refuses it
        opts, pretrained = _without_pretrained(opts)
    kwargs = _literal_options(opts, spec, origin)
    try:
        import timm
    except ImportError:
        raise UsageError(f"{origin} {spec!r} needs timm, which is not installed: pip install 'prunecli[timm]'") from None
    base = name.split(".", 1)[0]
    known = timm.list_models()
    if base not in known:
        raise UsageError(f"{origin} {spec!r}: timm has no model {base!r}{_closest(base, known)}; "
                         "see timm.list_models()")
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would precede prunecli's one line
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{origin} {spec!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    except Exception as exc:  # noqa: BLE001 - pretrained=True: the Hub is unreachable, or has no such weights
        if not pretrained:
            raise
        raise UsageError(f"{origin} {spec!r}: timm could not fetch the pretrained weights ({type(exc).__name__}); "
                         f"save them where there is network (timm.create_model({name!r}, pretrained=True)"
                         ".state_dict()) and pass --weights FILE with timm:" + name) from exc
    finally:
        hub_log.setLevel(level)


def _build_zoo(spec: str, origin: str):
    from prunecli.models import zoo

    name, _, opts = spec[len("prunecli:"):].partition(":")
    kwargs = _literal_options(opts, spec, origin)
    if name not in zoo.MODELS:
        raise UsageError(f"{origin} {spec!r}: prunecli has no built-in model {name!r}{_closest(name, list(zoo.MODELS))}; "
                         f"choices: {', '.join(sorted(zoo.MODELS))}")
    try:
        return zoo.MODELS[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{origin} {spec!r}: bad constructor option: {exc}") from exc


def build_factory_object(spec: str, flag: str):
    """Call ``file.py:factory[:k=v]`` or ``package.module:factory[:k=v]`` and return what it returns.

    This imports and runs user code; only specs the user typed reach it.
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
        # nothing is written beside the user's file (no __pycache__ in their folder), whatever the environment says
        write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # user code: report its failure as an input error
            raise UsageError(f"{flag} {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.dont_write_bytecode = write_bytecode
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
