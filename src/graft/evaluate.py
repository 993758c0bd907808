"""`graft eval RUN_DIR DATA`: a saved model on labelled images or texts, with the same metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data.images import SkippedFile, scan_image_folder
from .data.text import is_text_data, read_text_data, split_columns
from .metrics import classification_metrics
from .predict import load


def evaluate_folder(run_dir: str | Path, data: str | Path) -> dict[str, Any]:
    model = load(run_dir)
    if model.meta.get("modality", "image") == "text":
        inputs, labels, skipped = _texts(data, model.meta, model.classes_)
    else:
        samples, skipped = scan_image_folder(data, classes=model.classes_)
        inputs, labels = list(samples.paths), np.asarray(samples.labels)
    proba = model.predict_proba(inputs)
    metrics = classification_metrics(labels, proba.argmax(1), model.classes_)
    return metrics | {"skipped_files": [{"path": s.path, "reason": s.reason} for s in skipped]}


def _texts(
    data: str | Path, meta: dict[str, Any], classes: tuple[str, ...]
) -> tuple[list[str], np.ndarray, list[SkippedFile]]:
    if not is_text_data(data):
        raise ValueError(
            f"{data} is not a text table or folder, and {meta['backbone']['name']} is a text model"
        )
    recipe = meta.get("recipe", {})
    table = read_text_data(
        data, split_columns(recipe.get("text_column", "text")), recipe.get("label_column", "label")
    )
    index = {c: i for i, c in enumerate(classes)}
    skipped = list(table.skipped)
    texts, labels = [], []
    for text, label in zip(table.texts, table.labels, strict=True):
        if label in index:
            texts.append(text)
            labels.append(index[label])
        else:
            skipped.append(SkippedFile(str(data), f"label {label!r} is not one of the model's classes"))
    return texts, np.asarray(labels, dtype=np.int64), skipped
