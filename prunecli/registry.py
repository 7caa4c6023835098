"""Named registries with helpful misses (an unknown name lists the choices and the closest one)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map whose misses raise `UsageError` naming the flag and the choices."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind = kind
        self.flag = flag
        self._items: dict[str, T] = {}

    def register(self, name: str, **attributes) -> Callable[[T], T]:
        """Register under ``name``; ``attributes`` are set on the object (e.g. what an allocator needs)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            for key, value in attributes.items():
                setattr(obj, key, value)
            self._items[name] = obj
            return obj

        return deco

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
