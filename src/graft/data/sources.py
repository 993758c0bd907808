"""Every image dataset as train / val / (test) lists of sources and labels, whatever it came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from .images import DataError, ImageSamples, SkippedFile, load_cifar10, load_image_splits
from .pipeline import Source


@dataclass(frozen=True)
class Labelled:
    sources: Sequence[Source]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class DataSplits:
    train: Labelled
    val: Labelled
    test: Labelled | None
    classes: tuple[str, ...]
    name: str
    val_source: str
    skipped: list[SkippedFile] = field(default_factory=list)


def _from_samples(samples: ImageSamples) -> Labelled:
    return Labelled(list(samples.paths), np.asarray(samples.labels, dtype=np.int64))


def load_image_data(
    data: str,
    val: str | None,
    test: str | None,
    val_fraction: float,
    seed: int,
    data_root: str | None = None,
) -> DataSplits:
    if data == "cifar10":
        return _cifar10(data_root or ".cache/data/cifar10-python", val_fraction, seed)
    splits = load_image_splits(data, val=val, test=test, val_fraction=val_fraction, seed=seed)
    return DataSplits(
        train=_from_samples(splits.train),
        val=_from_samples(splits.val),
        test=_from_samples(splits.test) if splits.test is not None else None,
        classes=tuple(splits.train.classes),
        name=Path(data).resolve().name,
        val_source=splits.val_source,
        skipped=list(splits.skipped),
    )


def split_arrays(
    images: Sequence[np.ndarray], labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[Labelled, Labelled]:
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    pick = lambda ii: Labelled([images[i] for i in sorted(ii)], labels[np.sort(ii)])  # noqa: E731
    return pick(train_idx), pick(val_idx)


def _cifar10(root: str, val_fraction: float, seed: int) -> DataSplits:
    images, labels, classes = load_cifar10(root, train=True)
    test_images, test_labels, _ = load_cifar10(root, train=False)
    train, val = split_arrays(images, np.asarray(labels), val_fraction, seed)
    return DataSplits(
        train,
        val,
        Labelled(test_images, np.asarray(test_labels)),
        tuple(classes),
        "cifar10",
        f"split:{val_fraction}",
    )
