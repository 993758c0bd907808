"""One registry for every pluggable kind (modalities, tasks, export formats, backbones), as timm's
and torchvision's model registries: the built-in entries are loaded on first use (`load_builtins`,
once), a plugin registers its own by name; a second entry under a name is a bug, not an update; an
unknown name is a one-line ConfigError listing the known ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(
        self,
        kind: str,
        load_builtins: Callable[[], None] = lambda: None,
        unknown: str = "unknown {kind} {name!r}; graft knows {known}",
    ) -> None:
        self.kind, self._load_builtins, self._unknown = kind, load_builtins, unknown
        self._entries: dict[str, T] = {}
        self._builtins = "unloaded"  # then "loading" (a lookup while they load finds what is there), "loaded"

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def _ensure_builtins(self) -> None:
        if self._builtins != "unloaded":
            return
        self._builtins = "loading"
        try:
            self._load_builtins()
        except BaseException:
            self._builtins = "unloaded"  # tried again on the next lookup, as the error says
            raise
        self._builtins = "loaded"

    def get(self, name: str) -> T:
        self._ensure_builtins()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(self._unknown.format(kind=self.kind, name=name, known=known))
        return self._entries[name]

    def all(self) -> dict[str, T]:
        self._ensure_builtins()
        return dict(self._entries)
