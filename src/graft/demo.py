"""`graft demo`: the effect of pretraining, isolated, on scikit-learn's bundled digits, offline.

Same images, same architecture: ImageNet EfficientNet-Lite0 features + a linear head versus the same
network trained from scratch on the few labelled images (graft compare's honest baseline: until
validation accuracy stops improving, never fewer steps than fine-tuning).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .compare import method_config, write_outputs
from .config import TrainConfig
from .data.images import load_digits_images
from .data.splits import DataSplits, Labelled, stratified_subset
from .modalities import get_modality
from .options import DemoConfig
from .runner import Log, run
from .training.timing import finetune_epochs

BACKBONE = get_modality("image").default_backbone

TEST_PER_CLASS = 50  # fixed held-out set: 500 images, the same for every --labels-per-class
TEST_SEED = 12345
SCRATCH_BATCH = 32  # 100 images: three steps an epoch for the network trained from scratch
SCRATCH_EPOCHS = 15  # at most; it stops earlier when validation accuracy stops improving


def digits_splits(labels_per_class: int, seed: int) -> DataSplits:
    images, labels, classes = load_digits_images()
    labels = np.asarray(labels)
    test_idx = stratified_subset(labels, TEST_PER_CLASS, seed=TEST_SEED)
    train_idx = stratified_subset(labels, labels_per_class, seed=seed, exclude=test_idx)
    val_idx = stratified_subset(
        labels, labels_per_class, seed=seed + 1, exclude=np.concatenate([test_idx, train_idx])
    )
    pick = lambda idx: Labelled([images[i] for i in idx], labels[idx])  # noqa: E731
    return DataSplits(
        pick(train_idx),
        pick(val_idx),
        pick(test_idx),
        tuple(classes),
        "digits",
        f"{labels_per_class} per class",
    )


def run_demo(config: DemoConfig, log: Log = print) -> dict[str, Any]:
    """A small `graft compare` on digits with a fixed recipe: the numbers depend on the seed, not
    on the machine (only the seconds do). The transfer run's bundle is the run folder; the
    baseline and the comparison (compare.json, plots, report.html) go in subfolders."""
    splits = digits_splits(config.labels_per_class, config.seed)
    image = get_modality("image")
    out = Path(config.out or Path("runs") / "demo")
    base = TrainConfig(data="digits", image_size=config.image_size, seed=config.seed)
    log(
        f"digits: {len(splits.train)} labelled training images ({config.labels_per_class} per class), "
        f"{len(splits.test)} held-out test images, {config.image_size}px"
    )
    rows, results = [], {}
    for method, folder in (("linear", out), ("scratch", out / "scratch")):
        started = time.perf_counter()
        epochs = finetune_epochs(base, image, "finetune", len(splits.train), SCRATCH_BATCH)
        run_config = replace(method_config(base, method, epochs), out=str(folder), overwrite=True)
        quiet = method == "scratch"
        if quiet:  # a fixed budget of epochs keeps the demo within two minutes on two cores
            run_config = replace(run_config, batch_size=SCRATCH_BATCH, epochs=SCRATCH_EPOCHS)
            log("from scratch: same network, same images, until validation accuracy stops improving ...")
        result = run(run_config, log=(lambda line: None) if quiet else log, splits=splits, modality=image)
        results[method] = result
        rows.append(_row(method, config, splits, result, time.perf_counter() - started))
    transfer, scratch = rows
    write_outputs(
        {
            "data": "digits",
            "modality": "image",
            "test_examples": len(splits.test),
            "validation_examples": len(splits.val),
            "rows": rows,
        },  # fmt: skip
        out / "compare",
    )
    return {
        "transfer": {"accuracy": transfer["test_accuracy"], "seconds": transfer["seconds"]},
        "scratch": {
            "accuracy": scratch["test_accuracy"],
            "seconds": scratch["seconds"],
            "epochs": scratch["epochs"],
        },
        "labels_per_class": config.labels_per_class,
        "run_dir": str(results["linear"].run_dir),
        "compare_report": str(out / "compare" / "report.html"),
        "backbone": BACKBONE,
        "test_images": len(splits.test),
    }


def _row(method: str, config: DemoConfig, splits: DataSplits, result: Any, seconds: float) -> dict[str, Any]:
    """One method's row of the comparison (compare.json), as `graft compare` writes it."""
    return {
        "method": method,
        "backbone": BACKBONE,
        "labels_per_class": config.labels_per_class,
        "all": False,
        "seed": config.seed,
        "train_examples": len(splits.train),
        "test_accuracy": result.report["test"]["accuracy"],
        "validation_accuracy": result.report["validation"]["accuracy"],
        "epochs": len(result.report["history"]),
        "seconds": seconds,
        "run_dir": str(result.run_dir),
    }
