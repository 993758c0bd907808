"""Text fine-tuning: tokenise once, length-bucketed batches with dynamic padding, the shared loop.

Texts are tokenised once into unpadded id tensors. Each training batch holds texts of similar
length (sorted inside shuffled chunks, as Hugging Face's `group_by_length` and fairseq do) and is
padded only to its own longest text, so little compute is spent on padding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import strategies
from .backbones import Backbone, TextPreprocessing
from .checkpoint import Checkpointer
from .config import TrainConfig, resolved
from .data.sources import DataSplits
from .heads import GraftModel
from .metrics import classification_metrics, validation_row
from .train import autocast, epoch_line, fit, require_every_class, seconds_per_step

Log = Callable[[str], None]
BUCKET_BATCHES = 50  # batches per sorted chunk: similar lengths inside a batch, random order outside
LENGTH_PERCENTILE = 99  # --max-length from the data: the 99th percentile of token counts
# Fine-tuning quality follows the number of updates, not epochs: small datasets get more epochs
# (Mosbach et al. 2021, "On the stability of fine-tuning BERT": train small tasks longer).
MIN_FINETUNE_STEPS = 300
WARMUP_SHARE = 0.1  # of the steps: ULMFiT's slanted triangular cut_frac and BERT's warm-up
MAX_DEFAULT_EPOCHS = 20


def default_text_epochs(config: TrainConfig, n_train: int, batch_size: int) -> int:
    """The strategy's epochs, raised on small data to at least MIN_FINETUNE_STEPS updates."""
    epochs = resolved(config, "epochs")
    if config.epochs is None and config.strategy != "linear":
        steps_per_epoch = math.ceil(n_train / batch_size)
        epochs = max(epochs, min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_FINETUNE_STEPS / steps_per_epoch)))
    return epochs


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[torch.Tensor]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded]


def length_from_data(tokenizer: Any, texts: Sequence[str], prep: TextPreprocessing) -> TextPreprocessing:
    """The maximum sequence length: a high percentile of the training texts' token counts (so a
    few very long texts do not set the cost of every batch), rounded up to 8, capped by the model."""
    sample = list(texts[:20000])
    lengths = [
        len(ids) for ids in tokenizer(sample, truncation=True, max_length=prep.model_max_length)["input_ids"]
    ]
    wanted = int(np.percentile(lengths, LENGTH_PERCENTILE)) if lengths else prep.max_length
    return prep.with_length(max(8, math.ceil(wanted / 8) * 8))


def pad(ids: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence(list(ids), batch_first=True, padding_value=pad_id)


def bucketed_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of indices: shuffle, sort chunks of BUCKET_BATCHES batches by length, shuffle batches."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    chunk_size = batch_size * BUCKET_BATCHES
    for start in range(0, len(perm), chunk_size):
        chunk = sorted(perm[start : start + chunk_size], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def _batches(
    ids: list[torch.Tensor], labels: torch.Tensor, batch_size: int, seed: int, pad_id: int
) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    lengths = [len(t) for t in ids]

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a function of (seed, epoch): a resumed run sees the same batches
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        for index in bucketed_order(lengths, batch_size, generator):
            yield pad([ids[i] for i in index], pad_id), labels[index]

    return batches


@torch.inference_mode()
def predict_ids(model: nn.Module, ids: Sequence[torch.Tensor], pad_id: int, batch: int = 128) -> torch.Tensor:
    """Logits in input order; batches are formed from length-sorted texts (least padding)."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(0)
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        with autocast(device):
            logits = model(pad([ids[i] for i in index], pad_id).to(device)).float().cpu()
        if not len(out):
            out = torch.empty(len(ids), logits.shape[1])
        out[index] = logits
    return out


def _evaluator(ids: list[torch.Tensor], labels: torch.Tensor, pad_id: int, classes: tuple[str, ...]):
    def evaluate(model: nn.Module) -> dict[str, float]:
        return validation_row(predict_ids(model, ids, pad_id), labels, classes)

    return evaluate


@torch.no_grad()
def _init_feature_norm(model: GraftModel, ids: list[torch.Tensor], pad_id: int) -> None:
    model.body.eval()
    feats = torch.cat([model.body(pad(ids[i : i + 64], pad_id)) for i in range(0, min(len(ids), 256), 64)])
    model.head[0].fit(feats.float())


def train_text(
    config: TrainConfig,
    backbone: Backbone,
    prep: TextPreprocessing,
    model: GraftModel,
    splits: DataSplits,
    run_dir: Path,
    log: Log,
    started: float,
    probed: bool = False,
) -> dict[str, Any]:
    from .finetune import head_phase, loop_config, resume_key

    t0 = time.perf_counter()
    tok = backbone.tokenizer
    ids = tokenize(tok, splits.train.sources, prep.max_length)
    labels = torch.from_numpy(splits.train.labels)
    val_ids = tokenize(tok, splits.val.sources, prep.max_length)
    val_labels = torch.from_numpy(splits.val.labels)
    require_every_class(labels, splits.classes)
    log(
        f"tokenised {len(ids)} training and {len(val_ids)} validation texts ({time.perf_counter() - t0:.1f}s)"
    )
    if not probed:
        _init_feature_norm(model, ids, prep.pad_id)
    batch_size = resolved(config, "batch_size")
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    groups = [*backbone.trainable_groups(), (strategies.HEAD, list(model.head.parameters()))]
    options, epochs = head_phase(config, default_text_epochs(config, len(ids), batch_size), probed)
    strategy = strategies.make_strategy(
        config.strategy, [n for n, _ in backbone.groups], **options, lr_mult=config.lr_mult
    )
    deadline = None
    if config.time_budget:
        epochs, deadline = _plan(
            config, model, ids, labels, batch_size, prep, len(val_ids), splits, started, log
        )
    loop = loop_config(
        config,
        epochs,
        labels,
        len(splits.classes),
        cycle="epoch" if config.strategy == "gradual" else "run",
        pct_start=WARMUP_SHARE,
    )
    t_train = time.perf_counter()
    history = fit(
        model,
        groups,
        strategy,
        _batches(ids, labels, batch_size, config.seed, prep.pad_id),
        steps_per_epoch,
        _evaluator(val_ids, val_labels, prep.pad_id, splits.classes),
        loop,
        log=lambda row: log(epoch_line(row, loop.epochs)),
        checkpoint=Checkpointer(run_dir, resume_key(config), resume=config.resume),
        deadline=deadline,
    )
    result: dict[str, Any] = {
        "history": history,
        "train_seconds": time.perf_counter() - t_train,
        "extract_seconds": 0.0,
        "cache_hit": False,
        "n_train": len(ids),
        "epochs": epochs,
        "val": _metrics(model, val_ids, val_labels, prep.pad_id, splits.classes),
    }
    if splits.test is not None:
        test_ids = tokenize(tok, splits.test.sources, prep.max_length)
        test_labels = torch.from_numpy(splits.test.labels)
        result["test"] = _metrics(model, test_ids, test_labels, prep.pad_id, splits.classes)
    return result


def _metrics(model: nn.Module, ids, labels: torch.Tensor, pad_id: int, classes: tuple[str, ...]) -> dict:
    logits = predict_ids(model, ids, pad_id)
    return classification_metrics(labels.numpy(), logits.argmax(1).numpy(), classes)


def _plan(config, model, ids, labels, batch_size, prep, n_val, splits, started, log) -> tuple[int, float]:
    """Epochs and deadline under --time-budget: time a few steps on typical-length batches."""
    per_step = time_text_steps(model, ids, labels, batch_size, prep.pad_id)
    n_eval = n_val + (len(splits.test) if splits.test is not None else 0)
    reserve = n_eval * per_step / (3 * batch_size) + 0.03 * config.time_budget
    deadline = started + config.time_budget - reserve
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    epochs = max(1, math.ceil((deadline - time.perf_counter()) / (per_step * steps_per_epoch)))
    log(
        f"time budget {config.time_budget:.0f}s: {per_step:.3f}s per step, about {epochs} epoch(s), "
        f"training until {deadline - started:.0f}s, the schedule follows the clock"
    )
    return epochs, deadline


def time_text_steps(
    model: nn.Module,
    ids: list[torch.Tensor],
    labels: torch.Tensor,
    batch_size: int,
    pad_id: int,
    steps: int = 3,
) -> float:
    """Seconds per training step on batches of median-length texts (weights restored afterwards)."""
    median = int(np.median([len(t) for t in ids]))
    typical = sorted(range(len(ids)), key=lambda i: abs(len(ids[i]) - median))[:batch_size]
    x, y = pad([ids[i] for i in typical], pad_id), labels[typical]
    return seconds_per_step(model, x, y, steps) * 1.1  # + the AdamW step, not timed above


def estimate_text_epoch_seconds(
    model: GraftModel, tokenizer: Any, texts: Sequence[str], prep: TextPreprocessing, batch_size: int
) -> float:
    """Seconds per fine-tuning epoch, from a few timed steps on typical training texts."""
    sample = list(texts[:2000])
    ids = tokenize(tokenizer, sample, prep.max_length)
    labels = torch.zeros(len(ids), dtype=torch.long)
    per_step = time_text_steps(model, ids, labels, batch_size, prep.pad_id)
    return per_step * math.ceil(len(texts) / batch_size)
