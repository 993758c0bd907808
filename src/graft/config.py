"""The frozen run configuration: CLI arguments become this, and it is written into the run folder."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    data: str
    val: str | None = None
    test: str | None = None
    data_root: str | None = None  # where `cifar10` lives or is downloaded to
    backbone: str | None = None  # None: efficientnet_lite0 for images, minilm for text
    weights: str | None = None
    strategy: str = "auto"
    head: str = "linear"
    dropout: float = 0.0
    epochs: int | None = None  # None: the strategy's default
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | auto (balanced: rare classes weigh more in the loss)
    image_size: int | None = None  # None: the backbone's own input size
    flip_features: bool = False  # average features of each image and its mirror image
    val_fraction: float = 0.1
    seed: int = 0
    out: str | None = None
    # fine-tuning (strategies finetune and gradual)
    freeze_epochs: int | None = None  # finetune: head-only epochs first (None: 1 for images, 0 for text)
    lr_mult: float = 10.0  # head LR / earliest group's LR, geometric in between
    # fine-tune only the top N layer groups (None: all). Frozen lower groups cost no backward pass:
    # with the top half of MiniLM training, a step is ~1.5x faster; on TREC-6 and SST-2 that bought
    # 1.5x the updates in the same time and no better accuracy (bench/README.md), so all train.
    train_groups: int | None = None
    augment: str = "light"  # none | light (random-resized-crop + flip) | strong (+ TrivialAugment)
    # frozen: pretrained BatchNorm normalises with its running statistics, also in trained groups
    # (Keras' fine-tuning guide; torchvision's FrozenBatchNorm2d). Small data otherwise shifts
    # the statistics the head was trained on, and momentum-0.01 TF-ported BN barely re-learns them.
    bn: str = "frozen"  # frozen | trainable
    patience: int | None = None  # early stopping after this many epochs without a better val accuracy
    time_budget: float | None = None  # seconds for the whole run
    resume: bool = False
    # text
    text_column: str = "text"  # several columns: "title,body" (joined with a newline)
    label_column: str = "label"
    pooling: str = "mean"  # mean | cls
    max_length: int | None = None  # None: the 99th percentile of the training texts' token counts
    adapt_lm: int = 0  # epochs of masked-LM training on the task's texts before classification
    unlabelled: str | None = None  # more texts for --adapt-lm (one per line, or a table)
    modality: str = "image"  # set from the data by the runner: image | text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Defaults per strategy. Linear probes on standardised features: AdamW at 1e-3 with a one-cycle
# schedule over 30 cheap epochs is the usual recipe (MAE/DINO linear evaluation use the same order
# of magnitude); large batches keep head training on cached features in the milliseconds.
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"epochs": 30, "lr": 1e-3, "batch_size": 256},
    # fine-tuning: AdamW 1e-3 for the head, 1e-4 at the stem (lr_mult 10), batches of 64 fit a laptop
    "finetune": {"epochs": 5, "lr": 1e-3, "batch_size": 64, "freeze_epochs": 1},
    "gradual": {"epochs": 5, "lr": 1e-3, "batch_size": 64},
}

# Text encoders: BERT-style fine-tuning (Devlin et al.: 2-4 epochs, batch 32, warm-up) with
# ULMFiT's discriminative rates. The rate given is the head's; with --lr-mult 10 over a 6-layer
# encoder the top layer gets 0.72x, the bottom layer 0.14x and the embeddings 0.1x of it, i.e.
# 1.4e-4 .. 2e-5: the range small encoders (MiniLM, DistilBERT) are fine-tuned with. Chosen from
# that range before measuring; on TREC-6 (one seed) 2e-4 and 5e-4 gave 3.4% and 3.8% test error.
# Two epochs, the low end of BERT's range, because an epoch of text costs minutes on a laptop
# CPU; small datasets get more (text.default_text_epochs: at least 300 updates). No head-only
# epoch: with warm-up, a fresh linear head on pooled embeddings settles within the first steps.
TEXT_STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"epochs": 30, "lr": 1e-3, "batch_size": 256},
    "finetune": {"epochs": 2, "lr": 2e-4, "batch_size": 32, "freeze_epochs": 0},
    "gradual": {"epochs": 4, "lr": 2e-4, "batch_size": 32},
}


def parse_duration(text: str | float | None) -> float | None:
    """'3300', '30m', '1h', '90s' -> seconds (positive and finite)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    raw = str(text).strip().lower()
    try:
        seconds = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"bad --time-budget {text!r}: use positive seconds, or minutes/hours as 30m, 1h")
    return seconds


def resolved(config: TrainConfig, key: str) -> Any:
    """The value of `key` in `config`, or the strategy's default when the user left it unset."""
    value = getattr(config, key)
    table = TEXT_STRATEGY_DEFAULTS if config.modality == "text" else STRATEGY_DEFAULTS
    return table[config.strategy][key] if value is None else value
