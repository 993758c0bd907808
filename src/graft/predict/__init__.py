"""Prediction from a run folder or an exported model, one API for every runtime (`answers.Answers`):
PyTorch (`predictor`), onnxruntime from an ONNX graph (`onnx_predictor`, the graph itself in
`graph`), and the torch-free path for exported image models (`light`).

Importing this package imports neither torch nor a training module: `Predictor`, `load` and
`build_model` are loaded from `predictor` on first use, so `graft predict` on an exported model
stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .predictor import RUNTIMES, Predictor, build_model, load

_FROM_PREDICTOR = ("Predictor", "build_model", "load", "RUNTIMES")


def __getattr__(name: str) -> Any:
    if name in _FROM_PREDICTOR:
        return getattr(importlib.import_module(f"{__name__}.predictor"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RUNTIMES", "Predictor", "build_model", "load"]
