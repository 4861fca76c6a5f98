"""A tiny name -> entry registry whose failed lookups list the known names (pure Python)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from edgeai.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; `register` is a decorator, `get` fails with the known names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

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
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"no {self.kind} named {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
