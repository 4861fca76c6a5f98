"""A tiny name -> entry registry whose failed lookups list the known names (pure Python)."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from edgeai.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; `register` is a decorator, `get` fails with the known names."""

    def __init__(self, kind: str, package: str | None = None):
        """`package`: where entries live, one module each; its public modules are imported on the
        first lookup that misses (modules register on import and keep heavy imports inside)."""
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    def register(self, name: str) -> Callable[[T], T]:
        def deco(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return deco

    def add(self, name: str, entry: T) -> None:
        self.register(name)(entry)

    def get(self, name: str) -> T:
        if name not in self._entries:
            self.discover()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"no {self.kind} named {name!r}; known: {known}") from None

    def discover(self) -> None:
        """Import every public module of `package` once, so each can register its entries."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
