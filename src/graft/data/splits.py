"""graft's one data model: labelled sources (image paths/arrays, or texts) in train/val/test splits,
and the one stratified splitter every reader uses."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class SkippedFile:
    """An input left out of training, and why (a file, or `file: line N` for a table row)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Labelled:
    """Sources with their labels: integer indices into the split's classes (single-label), or one
    row of floats per source (multi-label 0/1 indicators, regression targets: `graft.tasks`)."""

    sources: Sequence[Any]
    labels: np.ndarray

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim not in (1, 2) or len(labels) != len(self.sources):
            raise ValueError(f"need one label per source: {len(self.sources)} sources, labels {labels.shape}")
        if labels.ndim == 2:  # indicators or targets: the float type the losses take
            labels = labels.astype(np.float32)
        object.__setattr__(self, "labels", labels)  # frozen: normalise lists to an array

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Labelled:
        """The given positions, in that order; a boolean mask selects where it is True."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == np.bool_ else idx.astype(np.int64).reshape(-1)
        return Labelled([self.sources[i] for i in idx], self.labels[idx])


@dataclass(frozen=True)
class DataSplits:
    train: Labelled
    val: Labelled
    test: Labelled | None
    classes: tuple[str, ...]  # the class names, or a multi-label task's labels, or regression's targets
    name: str
    val_source: str  # "folder", a file path, or "split:<fraction>"
    skipped: list[SkippedFile] = field(default_factory=list)
    task: Any = "single"  # graft.tasks: the Task a reader resolved, or a name: single, multi, regression
    # a DataFrame's or dataset's columns the inputs were read from (the bundle records them, so
    # predicting on a table reads the same ones); empty: files, or a table read by --text-column
    input_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableLabels:
    """How a table's labels are read: its label column(s), the task (graft.tasks), the separator."""

    label_column: str = "label"
    task: str = "auto"
    separator: str = "|"


def check_val_fraction(val_fraction: float) -> None:
    """DataError unless 0 < val_fraction < 1; readers call it before any (slow) reading."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    seed: int,
    where: str = "the training data",
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices, stratified by label and seeded. A class with fewer than 2
    examples is a DataError naming it (`classes`: the names of the label indices): it cannot be in
    both halves, and a random one of them would lack it. Fewer validation slots than classes falls
    back to a plain seeded random split, with a warning that names the data."""
    from sklearn.model_selection import train_test_split

    check_val_fraction(val_fraction)
    labels = np.asarray(labels)
    if labels.ndim == 2:  # several labels or numeric targets an example: no single class to stratify by
        return random_split(len(labels), val_fraction, seed, where)
    _require_two_per_class(labels, where, classes)
    idx = np.arange(len(labels))
    try:
        train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError:
        warnings.warn(f"{where}: {_why_not_stratified(labels, val_fraction)}", UserWarning, stacklevel=2)
        try:
            train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed)
        except ValueError as err:
            raise DataError(
                f"{where}: {len(labels)} examples are too few to split off --val-fraction "
                f"{val_fraction}; add data or pass a validation set"
            ) from err
    return np.sort(train_idx), np.sort(val_idx)


def stratified_subset(
    labels: np.ndarray, per_class: int, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Sorted indices with ``per_class`` items of every class in ``labels``, none in ``exclude``."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    labels = np.asarray(labels).reshape(-1)
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None and len(exclude):
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(labels):  # sorted order keeps the draw reproducible
        candidates = np.flatnonzero((labels == cls) & allowed)
        if len(candidates) < per_class:
            raise DataError(
                f"class {cls} has {len(candidates)} usable samples, fewer than "
                f"per_class={per_class}; lower per_class or add data"
            )
        picked.append(rng.choice(candidates, size=per_class, replace=False))
    if not picked:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)


def random_split(n: int, val_fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) positions of a seeded random split (at least one example each side)."""
    check_val_fraction(val_fraction)
    if n < 2:
        raise DataError(f"{where}: {n} example(s) are too few to split off validation data; add data")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, math.ceil(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _require_two_per_class(labels: np.ndarray, where: str, classes: Sequence[str] | None) -> None:
    values, counts = np.unique(labels, return_counts=True)
    lonely = [values[i] for i in np.flatnonzero(counts < 2)]
    if not lonely or len(values) < 2:  # one class or none: the readers say so, naming their files
        return
    names = [repr(classes[int(v)]) if classes is not None else str(v) for v in lonely]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    which = f"class {shown} has" if len(names) == 1 else f"classes {shown} have"
    raise DataError(
        f"{where}: {which} a single example, too few to split off validation data: "
        "add examples, remove the class, or pass a validation set (--val)"
    )


def _why_not_stratified(labels: np.ndarray, val_fraction: float) -> str:
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    present = counts[counts > 0]
    smallest = int(present.min()) if len(present) else 0
    slots = math.ceil(len(labels) * val_fraction)
    if smallest >= 2 and slots < len(present):
        why = (
            f"a {val_fraction:g} validation split of {len(labels)} examples has {slots} place(s) for "
            f"{len(present)} classes"
        )
    else:
        why = f"the smallest class has {smallest} example(s), too few to stratify the validation split"
    return f"{why}; using a plain random split (pass a validation set or a larger --val-fraction to avoid it)"

