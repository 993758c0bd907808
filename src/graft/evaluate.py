"""`graft eval RUN_DIR DATA`: a saved model on a labelled image folder, with the same metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data.images import scan_image_folder
from .metrics import classification_metrics
from .predict import load


def evaluate_folder(run_dir: str | Path, data: str | Path) -> dict[str, Any]:
    model = load(run_dir)
    samples, skipped = scan_image_folder(data, classes=model.classes_)
    proba = model.predict_proba(list(samples.paths))
    metrics = classification_metrics(np.asarray(samples.labels), proba.argmax(1), model.classes_)
    return metrics | {"skipped_files": [{"path": s.path, "reason": s.reason} for s in skipped]}
