"""Old module paths that keep working for one release: each old module warns once, at the line that
imports it, and forwards every name (private ones too) to where it lives now."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved(old: str, homes: tuple[str, ...]) -> Callable[[str], Any]:
    """Warn that `old` moved to `homes` (at the importer's line) and return the module `__getattr__`
    that finds each of its names there."""
    warnings.warn(
        f"{old} is deprecated: import from {' or '.join(homes)}",
        DeprecationWarning,
        stacklevel=3,  # past this function and the old module's body: the importing line
    )

    def forward(name: str) -> Any:
        for where in homes:
            module = importlib.import_module(where)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return forward

