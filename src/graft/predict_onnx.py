"""Deprecated: `graft.predict_onnx` moved to `graft.predict.light`;
it still works for one release, with a DeprecationWarning."""

import importlib
import warnings
from typing import Any

from .predict.light import (  # noqa: F401 - the old names, re-exported
    EXPORTED,
    INPUT,
    ExportedImagePredictor,
    load_exported,
)

warnings.warn(
    "graft.predict_onnx is deprecated: import from graft.predict.light",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the old module (a private one too), from where it lives now."""
    for where in ("graft.predict.light",):
        module = importlib.import_module(where)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
