"""Architecture presets: what a user would otherwise have to know (input shape, round-to, layers kept intact).

Presets are YAML files in the top-level ``presets/`` folder (installed as ``prunecli.presets``).
They are matched automatically from the architecture name (``torchvision:resnet50`` -> ``resnet``)
or the model's class name, and can be named explicitly with ``--preset``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from prunecli.core.errors import UsageError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    match: tuple[str, ...]
    classes: tuple[str, ...]
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    crop_pct: float = 0.875  # imagefolder evaluation: resize to input / crop_pct, centre-crop (torchvision's recipe)

    def __post_init__(self) -> None:
        if self.round_to < 1:
            raise ValueError(f"preset {self.name}: round_to={self.round_to} must be >= 1")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"preset {self.name}: crop_pct={self.crop_pct} must be in (0, 1]")

    def input_shape_for(self, arch_name: str | None) -> tuple[int, ...]:
        if arch_name and arch_name in self.input_shapes:
            return self.input_shapes[arch_name]
        return self.input_shape

    def matches(self, arch_name: str | None, class_name: str | None) -> bool:
        if arch_name and any(fnmatch.fnmatchcase(arch_name, p) for p in self.match):
            return True
        return bool(class_name) and class_name in self.classes


def _from_yaml(text: str, source: str) -> Preset:
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
        return Preset(
            name=str(raw["name"]),
            description=str(raw.get("description", "")),
            match=tuple(raw.get("match", ())),
            classes=tuple(raw.get("classes", ())),
            input_shape=tuple(int(v) for v in raw.get("input_shape", (1, 3, 224, 224))),
            input_shapes={k: tuple(int(v) for v in s) for k, s in (raw.get("input_shapes") or {}).items()},
            round_to=int(raw.get("round_to", 1)),
            ignore=tuple(raw.get("ignore") or ()),
            crop_pct=float(raw.get("crop_pct", 0.875)),
        )
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"preset file {source} is malformed: {exc}") from exc


@lru_cache(maxsize=1)
def all_presets() -> dict[str, Preset]:
    """Every shipped preset, by name."""
    found: dict[str, Preset] = {}
    root = resources.files("prunecli.presets")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            preset = _from_yaml(entry.read_text(encoding="utf-8"), entry.name)
            found[preset.name] = preset
    return found


def get_preset(name: str) -> Preset:
    from prunecli.core.registry import Registry

    reg: Registry[Preset] = Registry("preset", "--preset")
    for key, preset in all_presets().items():
        reg.register(key)(preset)
    return reg.get(name)


def match_preset(arch_name: str | None, class_name: str | None) -> Preset | None:
    """The preset whose patterns match the architecture name (first) or the model class."""
    presets = all_presets().values()
    for preset in presets:
        if arch_name and any(fnmatch.fnmatchcase(arch_name, p) for p in preset.match):
            return preset
    for preset in presets:
        if class_name and class_name in preset.classes:
            return preset
    return None
