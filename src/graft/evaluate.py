"""`graft eval RUN_DIR DATA`: a saved model on labelled data of its modality, with the same metrics.

An input that cannot be read (a truncated JPEG) or a label the model never saw is counted and
reported, and the evaluation goes on with the rest."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundle import with_columns
from .data.frames import is_saved_dataset
from .data.splits import SkippedFile
from .errors import DataError
from .options import EvalOptions
from .predict.predictor import load

_UNKNOWN = re.compile(r"label (.+) \((\d+) row\(s\)\) is not one of the model's classes")


def evaluate_folder(
    run_dir: str | Path,
    data: str | Path,
    text_column: str | None = EvalOptions.text_column,
    label_column: str | None = EvalOptions.label_column,
    precision: str = EvalOptions.precision,
    image_column: str | None = EvalOptions.image_column,
) -> dict[str, Any]:
    if is_saved_dataset(data):  # its splits are read by training (--test is its test split) alone, so far
        raise DataError(
            f"{data}: graft eval does not read saved datasets yet; train with its test split, or evaluate "
            "that split written as a table (dataset['test'].to_parquet('test.parquet'))"
        )
    model = load(run_dir, precision=precision)
    meta = with_columns(model.meta, text_column, label_column, image_column)
    trained = tuple(model.meta["classes"])  # data labels match these; display_names are shown
    split = model.modality.evaluation_split(Path(data), trained)
    if split is not None:  # a train/ val/ test/ root, as graft train takes: its held-out split
        data = split[0]
    labelled, skipped = model.modality.read_labelled(data, meta, trained)
    sources = list(labelled.sources)
    logits, failures = model.logits_or_skip(sources)
    skipped = list(skipped) + [SkippedFile(str(sources[i]), reason) for i, reason in sorted(failures.items())]
    keep = np.array([i for i in range(len(sources)) if i not in failures], dtype=np.int64)
    if not len(keep):
        raise DataError(f"{data}: nothing to evaluate ({len(skipped)} input(s) skipped, none readable)")
    # the bundle's task (thresholds, target scales as training left them), its names as shown
    task = replace(model.task, names=tuple(model.classes_))
    labels = task.label_tensor(labelled.labels[keep])
    metrics = task.metrics(torch.from_numpy(logits[keep]), labels)
    return metrics | {
        "task": task.name,
        "skipped_files": [{"path": s.path, "reason": s.reason} for s in skipped],
        "unknown_labels": _unknown_labels(skipped),
        "precision": model.precision.to_dict(),
        "data": str(data),
        "split": split[1] if split is not None else None,
    }


def _unknown_labels(skipped: list[SkippedFile]) -> dict[str, int]:
    """label -> rows, for the labels of the data that are none of the model's classes."""
    found = {}
    for s in skipped:
        if m := _UNKNOWN.fullmatch(s.reason):
            found[m.group(1).strip("'\"")] = int(m.group(2))
    return found
