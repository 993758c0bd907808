"""Fine-tuning on images: the whole network (or a growing part of it) trains end to end.

Training images are decoded once into uint8 tensors and augmented per sample; validation images
are decoded and cropped once. The loop itself is `train.fit`; this module only feeds it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import strategies
from .backbones import Backbone, Preprocessing
from .checkpoint import Checkpointer
from .config import TrainConfig, resolved
from .data.images import SkippedFile
from .data.memory import MemoryDataset, decode_all, train_transform
from .data.pipeline import default_workers, iterate_batches, normalize
from .data.sources import DataSplits, Labelled
from .heads import GraftModel
from .metrics import classification_metrics, validation_row
from .train import (
    LoopConfig,
    autocast,
    balanced_class_weights,
    epoch_line,
    fit,
    require_every_class,
    seconds_per_step,
)

Log = Callable[[str], None]


def _decode(
    data: Labelled, max_side: int, skipped: list[SkippedFile]
) -> tuple[list[torch.Tensor], np.ndarray]:
    images, failures = decode_all(data.sources, max_side)
    for index, reason in failures.items():
        skipped.append(SkippedFile(str(data.sources[index]), reason))
    keep = [i for i in range(len(images)) if i not in failures]
    return [images[i] for i in keep], data.labels[keep]


def _eval_tensor(
    data: Labelled, prep: Preprocessing, skipped: list[SkippedFile]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation images, resized and center-cropped once, as one uint8 tensor."""
    parts, labels = [], []
    for batch in iterate_batches(data.sources, prep, batch_size=128):
        skipped.extend(SkippedFile(str(data.sources[i]), r) for i, r in batch.failures)
        parts.append(batch.images)
        labels.append(torch.from_numpy(data.labels[batch.indices.numpy()]))
    return torch.cat(parts), torch.cat(labels)


@torch.inference_mode()
def predict_images(
    model: nn.Module, images: torch.Tensor, prep: Preprocessing, batch: int = 128
) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        with autocast(device):
            out.append(model(normalize(images[i : i + batch].to(device), prep)).float())
    return torch.cat(out) if out else torch.empty(0)


def _evaluator(images: torch.Tensor, labels: torch.Tensor, prep: Preprocessing, classes: tuple[str, ...]):
    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = predict_images(model, images, prep)
        return validation_row(logits, labels, classes)

    return evaluate


def _batches(
    dataset: MemoryDataset, batch_size: int, seed: int, prep: Preprocessing
) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    workers = default_workers()

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # order and augmentation are functions of (seed, epoch): a resumed run sees the same batches
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(dataset) > batch_size,
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed * 1000 + epoch),
        )
        for x, y in loader:
            yield normalize(x, prep), y

    return batches


@torch.no_grad()
def _init_feature_norm(model: GraftModel, images: list[torch.Tensor], prep: Preprocessing) -> None:
    sample = torch.stack([train_transform(prep, "none")(img) for img in images[:256]])
    model.body.eval()
    with autocast(next(model.parameters()).device):
        feats = model.body(normalize(sample, prep)).flatten(1).float()
    model.head[0].fit(feats)


def train_finetune(
    config: TrainConfig,
    backbone: Backbone,
    prep: Preprocessing,
    model: GraftModel,
    splits: DataSplits,
    run_dir: Path,
    log: Log,
    started: float,
    probed: bool = False,
) -> dict[str, Any]:
    """`probed`: the head was already trained on cached features (runner.probe_head), so the
    head-only epochs are done and the first epoch trains the backbone too."""
    t0 = time.perf_counter()
    images, labels = _decode(splits.train, prep.resize_size, splits.skipped)
    require_every_class(labels, splits.classes)
    val_images, val_labels = _eval_tensor(splits.val, prep, splits.skipped)
    log(
        f"decoded {len(images)} training and {len(val_images)} validation images once "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    model = model.to(memory_format=torch.channels_last)
    if not probed:
        _init_feature_norm(model, images, prep)
    dataset = MemoryDataset(images, labels, train_transform(prep, config.augment))
    batch_size = resolved(config, "batch_size")
    steps_per_epoch = max(1, len(dataset) // batch_size) if len(dataset) > batch_size else 1
    groups = [*backbone.trainable_groups(), (strategies.HEAD, list(model.head.parameters()))]
    options, epochs = head_phase(config, resolved(config, "epochs"), probed)
    strategy = strategies.make_strategy(
        config.strategy, [n for n, _ in backbone.groups], **options, lr_mult=config.lr_mult
    )
    deadline = None
    if config.time_budget:
        per_step = _time_steps(model, dataset, batch_size, prep)
        n_eval = len(val_images) + (len(splits.test) if splits.test is not None else 0)
        # keep back the final evaluation (a forward is ~1/3 of a training step) and a 3% margin
        reserve = n_eval * per_step / (3 * batch_size) + 0.03 * config.time_budget
        deadline = started + config.time_budget - reserve
        epochs = max(1, math.ceil(2 * (deadline - time.perf_counter()) / (per_step * steps_per_epoch)))
        log(
            f"time budget {config.time_budget:.0f}s: {per_step:.3f}s per step, training until "
            f"{deadline - started:.0f}s, the schedule follows the clock"
        )
    loop = loop_config(
        config,
        epochs,
        labels,
        len(splits.classes),
        bn_frozen=config.bn == "frozen",
        cycle="epoch" if config.strategy == "gradual" else "run",
    )
    checkpointer = Checkpointer(run_dir, resume_key(config), resume=config.resume)
    t_train = time.perf_counter()
    history = fit(
        model,
        groups,
        strategy,
        _batches(dataset, batch_size, config.seed, prep),
        steps_per_epoch,
        _evaluator(val_images, val_labels, prep, splits.classes),
        loop,
        log=lambda row: log(epoch_line(row, loop.epochs)),
        checkpoint=checkpointer,
        deadline=deadline,
    )
    val_logits = predict_images(model, val_images, prep)
    result: dict[str, Any] = {
        "history": history,
        "train_seconds": time.perf_counter() - t_train,
        "extract_seconds": 0.0,
        "cache_hit": False,
        "n_train": len(labels),
        "epochs": epochs,
        "val": classification_metrics(val_labels.numpy(), val_logits.argmax(1).numpy(), splits.classes),
    }
    if splits.test is not None:
        test_images, test_labels = _eval_tensor(splits.test, prep, splits.skipped)
        logits = predict_images(model, test_images, prep)
        result["test"] = classification_metrics(test_labels.numpy(), logits.argmax(1).numpy(), splits.classes)
    return result


def _time_steps(
    model: GraftModel, dataset: MemoryDataset, batch_size: int, prep: Preprocessing, steps: int = 3
) -> float:
    """Seconds per training step, measured on real batches (the weights are restored afterwards)."""
    n = min(batch_size, len(dataset))
    x = normalize(torch.stack([dataset[i][0] for i in range(n)]), prep)
    y = torch.stack([dataset[i][1] for i in range(n)])
    return seconds_per_step(model, x, y, steps)


def head_phase(config: TrainConfig, epochs: int, probed: bool) -> tuple[dict[str, int], int]:
    """The finetune strategy's options and the loop's epochs. After a probe on cached features the
    head-only epochs are done already: they are taken off the count (none may be left), and
    everything trains in the rest."""
    if config.strategy != "finetune":
        return {}, epochs
    freeze = resolved(config, "freeze_epochs")
    if probed:
        return {"freeze_epochs": 0}, max(0, epochs - freeze)
    return {"freeze_epochs": freeze}, epochs


def loop_config(config: TrainConfig, epochs: int, labels: Any, num_classes: int, **extra: Any) -> LoopConfig:
    """The loop settings of a run, shared by every strategy."""
    weights = balanced_class_weights(labels, num_classes) if config.class_weights == "auto" else None
    return LoopConfig(
        epochs=epochs,
        lr=resolved(config, "lr"),
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        class_weights=weights,
        seed=config.seed,
        patience=config.patience,
        **extra,
    )


def estimate_epoch_seconds(
    model: GraftModel, train: Labelled, prep: Preprocessing, defaults: dict[str, Any]
) -> float:
    """Seconds per fine-tuning epoch, from a few timed steps on a batch of the real images."""
    batch_size = int(defaults["batch_size"])
    sample = Labelled(train.sources[:batch_size], train.labels[:batch_size])
    images, labels = _decode(sample, prep.resize_size, [])
    dataset = MemoryDataset(images, labels, train_transform(prep, "light"))
    per_step = _time_steps(model, dataset, batch_size, prep)
    return per_step * max(1, len(train) // batch_size) * 1.15  # + optimizer step and data loading


def resume_key(config: TrainConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the command that resumes it."""
    skip = {"resume", "out", "test", "time_budget"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}
