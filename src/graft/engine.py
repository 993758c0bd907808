"""Deprecated: `graft.engine` moved to `graft.runtime.engine`;
it still works for one release, with a DeprecationWarning."""

import importlib
import warnings
from typing import Any

from .runtime.engine import (  # noqa: F401 - the old names, re-exported
    MIN_INPUTS_TO_EXPORT,
    MIN_SPEEDUP,
    OPSET,
    PARITY_TOLERANCE,
    PROBE_IMAGES,
    EngineChoice,
    Forward,
    choose_engine,
    onnx_bytes,
    part_of,
    torch_forward,
)

warnings.warn(
    "graft.engine is deprecated: import from graft.runtime.engine",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the old module (a private one too), from where it lives now."""
    for where in ("graft.runtime.engine",):
        module = importlib.import_module(where)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
