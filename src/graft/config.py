"""The frozen run configuration: CLI arguments become this, and it is written into the run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    data: str
    val: str | None = None
    test: str | None = None
    data_root: str | None = None  # where `cifar10` lives or is downloaded to
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    strategy: str = "linear"
    head: str = "linear"
    dropout: float = 0.0
    epochs: int | None = None  # None: the strategy's default
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    image_size: int | None = None  # None: the backbone's own input size
    flip_features: bool = False  # average features of each image and its mirror image
    val_fraction: float = 0.1
    seed: int = 0
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Defaults per strategy. Linear probes on standardised features: AdamW at 1e-3 with a one-cycle
# schedule over 30 cheap epochs is the usual recipe (MAE/DINO linear evaluation use the same order
# of magnitude); large batches keep head training on cached features in the milliseconds.
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"epochs": 30, "lr": 1e-3, "batch_size": 256},
}


def resolved(config: TrainConfig, key: str) -> Any:
    value = getattr(config, key)
    return STRATEGY_DEFAULTS[config.strategy][key] if value is None else value
