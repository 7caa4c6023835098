"""Named registries with helpful misses (an unknown name lists the choices and the closest one).

A registry can also dispatch on a config's type (torchao's ``quantize_(model, config)``): a technique registers
its handler with the frozen dataclass that configures it (``register("global", config=Global)``), and the
pipeline finds the handler from the config alone (:meth:`Registry.for_config`). The config's class *is* the
choice of technique; its fields are that technique's settings, nothing else.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from prunecli.core.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map whose misses raise `UsageError` naming the flag and the choices."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind = kind
        self.flag = flag
        self._items: dict[str, T] = {}
        self._configs: dict[str, type] = {}  # name -> the config class that selects it
        self._by_config: dict[type, str] = {}

    def register(self, name: str, *, config: type | None = None, **attributes) -> Callable[[T], T]:
        """Register under ``name``; ``config``: the frozen dataclass whose instances select this entry;
        ``attributes`` are set on the object (e.g. what an allocator needs)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            for key, value in attributes.items():
                setattr(obj, key, value)
            self._items[name] = obj
            if config is not None:
                if config in self._by_config:
                    raise ValueError(f"{config.__name__} selects {self._by_config[config]!r} already")
                self._configs[name], self._by_config[config] = config, name
            return obj

        return deco

    def config(self, name: str) -> type:
        """The config class registered for ``name`` (an unknown name is the same helpful miss as :meth:`get`)."""
        self.get(name)
        return self._configs[name]

    def name_of(self, config: object) -> str:
        """The registered name that ``config``'s type selects; anything else names the config classes to use."""
        name = self._by_config.get(type(config))
        if name is None:
            choices = ", ".join(f"{cls.__name__}()" for cls in self._by_config)
            raise TypeError(f"{self.kind} must be one of {choices}, not {config!r}")
        return name

    def for_config(self, config: object) -> T:
        """The entry that ``config``'s type selects (the technique its class names)."""
        return self._items[self.name_of(config)]

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(
            f"{self.flag} {name!r} is not a known {self.kind}{hint}; choices: {', '.join(self.names())}"
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
