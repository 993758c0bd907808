"""graft: transfer learning for images and texts from one command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .api import Classifier, Regressor
    from .predict.onnx_predictor import OnnxPredictor
    from .predict.predictor import Predictor


def load(
    run_dir: Any, device: Any = None, runtime: str = "torch", engine: str = "auto", precision: str = "auto"
) -> Predictor | OnnxPredictor:
    """Load a run folder (`model.safetensors` + `graft.json`) for prediction; an exported `.onnx`
    file or `runtime="onnx"` predicts through onnxruntime with the same API. `engine` (auto, torch,
    onnxruntime): who runs the torch runtime's big CPU jobs (graft.runtime.engine). `precision` (auto,
    fp32, bf16, fp16): `auto` is bf16 on GPUs and CPUs with native bf16, else fp32; pass "fp32"
    for the probabilities an export's parity check compares against. `.precision` says which."""
    from .predict.predictor import load as _load  # torch is imported on first use, not on `import graft`

    return _load(run_dir, device, runtime, engine, precision)


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Regressor"):  # imported on first use: `import graft` stays light
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")


__all__ = ["Classifier", "Regressor", "__version__", "load"]
