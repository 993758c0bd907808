"""`graft demo`: the effect of pretraining, isolated, on scikit-learn's bundled digits, offline.

Same images, same architecture, same time budget: ImageNet EfficientNet-Lite0 features + a linear
head versus the same network trained from scratch on the few labelled images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones import create_backbone
from .config import TrainConfig
from .data.images import load_digits_images, stratified_subset
from .data.pipeline import iterate_batches, normalize
from .data.splits import DataSplits, Labelled
from .heads import GraftModel, HeadSpec, build_head
from .modalities import get_modality
from .runner import Log, run
from .training.callbacks import Deadline
from .training.loop import LoopConfig, clock_schedule, fit
from .training.strategies import HEAD, Stage

BACKBONE = get_modality("image").default_backbone

TEST_PER_CLASS = 50  # fixed held-out set: 500 images, the same for every --labels-per-class
TEST_SEED = 12345


@dataclass(frozen=True)
class DemoConfig:
    labels_per_class: int = 10
    image_size: int = 96  # digits are 8x8: 96 px keeps the demo fast; the backbone trained at 224
    seed: int = 0
    out: str | None = None


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


def _tensors(data: Labelled, prep) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(iterate_batches(data.sources, prep, batch_size=256, workers=0))
    x = torch.cat([normalize(b.images, prep) for b in batches])
    return x, torch.from_numpy(data.labels)


def train_from_scratch(splits: DataSplits, image_size: int, budget_s: float, seed: int) -> dict[str, Any]:
    """The same architecture, randomly initialised, trained on the same images for `budget_s`."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    backbone = create_backbone(BACKBONE, pretrained=False)
    prep = backbone.preprocessing.with_size(image_size)
    x, y = _tensors(splits.train, prep)
    x_test, y_test = _tensors(splits.test, prep)
    model = GraftModel(backbone.body, build_head(HeadSpec(), backbone.num_features, len(splits.classes)))
    groups = [*backbone.group_parameters(), (HEAD, list(model.head.parameters()))]
    everything = {name: 1.0 for name, _ in groups}
    batch = 32

    def batches(epoch: int):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(y), batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]

    # the schedule follows the clock and training stops at the deadline: exactly the same budget
    deadline = started + budget_s
    history = fit(
        model,
        groups,
        lambda e: Stage(everything),
        batches,
        -(-len(y) // batch),
        LoopConfig(epochs=1_000_000, lr=3e-3, seed=seed),
        callbacks=[Deadline(deadline)],
        schedule=clock_schedule(deadline),
    )
    recompute_batchnorm(model, x)
    with torch.inference_mode():
        model.eval()
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    return {"accuracy": accuracy, "seconds": time.perf_counter() - started, "epochs": len(history)}


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch: int = 50) -> None:
    """Exact BatchNorm statistics of the training images ("precise BN"): after a few hundred steps
    the slow-moving running averages of a network trained from scratch are still far off."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    for i in range(0, len(x), batch):
        model(x[i : i + batch])


def run_demo(config: DemoConfig, log: Log = print) -> dict[str, Any]:
    splits = digits_splits(config.labels_per_class, config.seed)
    out = config.out or str(Path("runs") / "demo")
    train_config = TrainConfig(
        data="digits", strategy="linear", image_size=config.image_size, seed=config.seed, out=out
    )
    log(
        f"digits: {len(splits.train)} labelled training images ({config.labels_per_class} per class), "
        f"{len(splits.test)} held-out test images, {config.image_size}px"
    )
    started = time.perf_counter()
    result = run(train_config, log=log, splits=splits, modality=get_modality("image"))
    transfer = {
        "accuracy": result.report["test"]["accuracy"],
        "seconds": time.perf_counter() - started,
    }
    log(f"from scratch: same network, same images, {transfer['seconds']:.0f}s budget ...")
    scratch = train_from_scratch(splits, config.image_size, transfer["seconds"], config.seed)
    return {
        "transfer": transfer,
        "scratch": scratch,
        "labels_per_class": config.labels_per_class,
        "run_dir": str(result.run_dir),
        "backbone": BACKBONE,
        "test_images": len(splits.test),
    }
