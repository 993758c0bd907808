"""graft: transfer learning for images and texts from one command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .predict import Predictor


def load(run_dir: Any, device: Any = None) -> Predictor:
    """Load a run folder (`model.safetensors` + `graft.json`) for prediction."""
    from .predict import load as _load  # torch is imported on first use, not on `import graft`

    return _load(run_dir, device)


__all__ = ["__version__", "load"]
