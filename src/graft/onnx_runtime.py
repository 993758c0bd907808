"""Deprecated: `graft.onnx_runtime` moved to `graft.predict.onnx_predictor`;
it still works for one release, with a DeprecationWarning."""

import importlib
import warnings
from typing import Any

from .predict.onnx_predictor import (  # noqa: F401 - the old names, re-exported
    OnnxPredictor,
    fresh_export,
    from_graph,
    load_onnx,
)

warnings.warn(
    "graft.onnx_runtime is deprecated: import from graft.predict.onnx_predictor",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    """Any other name of the old module (a private one too), from where it lives now."""
    for where in ("graft.predict.onnx_predictor",):
        module = importlib.import_module(where)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
