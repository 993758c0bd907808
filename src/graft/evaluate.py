"""`graft eval RUN_DIR DATA`: a saved model on labelled data of its modality, with the same metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .metrics import classification_metrics
from .predict import load


def evaluate_folder(run_dir: str | Path, data: str | Path) -> dict[str, Any]:
    model = load(run_dir)
    labelled, skipped = model.modality.read_labelled(data, model.meta, model.classes_)
    proba = model.predict_proba(list(labelled.sources))
    metrics = classification_metrics(labelled.labels, proba.argmax(1), model.classes_)
    return metrics | {"skipped_files": [{"path": s.path, "reason": s.reason} for s in skipped]}
