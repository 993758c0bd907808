"""The backbone interface and registry: every backbone, whatever its source, becomes a `Backbone`.

Like timm's `group_matcher`, a backbone carries named, ordered layer groups (stem ... blocks ...),
so freezing, gradual unfreezing and discriminative learning rates are generic. Like torchvision's
weights enums, it carries the preprocessing its weights expect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

from ..errors import BackboneError
from ..registry import Registry

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneInfo",
    "Preprocessing",
    "register_backbone",
    "registered_backbones",
]


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone's weights (timm's PretrainedCfg, in short)."""

    input_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.input_size / self.crop_pct))

    def with_size(self, input_size: int | None) -> Preprocessing:
        return self if not input_size else replace(self, input_size=int(input_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=int(d["input_size"]),
            crop_pct=float(d["crop_pct"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=str(d["interpolation"]),
        )


@dataclass
class Backbone:
    """A feature extractor: `body(x)` maps a normalised image batch (or token ids) to (N, num_features)."""

    name: str
    source: str  # packaged | torchvision | timm | local
    body: nn.Module
    num_features: int
    preprocessing: Any  # Preprocessing for images, TextPreprocessing for text
    groups: list[tuple[str, list[str]]]  # ordered (group name, parameter names in `body`)
    weights: str  # where the weights came from: a file name, a hub id, or "random"
    modality: str = "image"  # the name of the modality whose inputs `body` takes
    tokenizer: Any = None  # text: the Hugging Face tokenizer
    model_config: dict[str, Any] | None = None  # text: the encoder's config, saved into bundles

    def group_parameters(self) -> list[tuple[str, list[nn.Parameter]]]:
        params = dict(self.body.named_parameters())
        return [(name, [params[p] for p in names]) for name, names in self.groups]

    def freeze_below(self, train_top: int | None, also: Iterable[nn.Parameter] = ()) -> list[str]:
        """Freeze every layer group below the top `train_top` ones (None: all train) and the
        parameters in `also`; returns the names of the groups left to train, bottom to top."""
        groups = self.group_parameters()
        first = 0 if train_top is None else max(0, len(groups) - train_top)
        for _, params in groups[:first]:
            for p in params:
                p.requires_grad_(False)
        for p in also:
            p.requires_grad_(False)
        return [name for name, _ in self.trainable_groups()]

    def trainable_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The layer groups that train, without their frozen parameters (see `freeze_below`)."""
        groups = [(name, [p for p in params if p.requires_grad]) for name, params in self.group_parameters()]
        return [(name, params) for name, params in groups if params]


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    source: str
    build: Callable[..., Backbone] = field(repr=False)
    describe: Callable[[], dict[str, Any]] = field(repr=False)


# as torchvision's registry: a second entry is a bug, not an update (`graft backbones` lists them)
_BACKBONES: Registry[BackboneInfo] = Registry("backbone")


def register_backbone(info: BackboneInfo) -> BackboneInfo:
    return _BACKBONES.register(info.name, info)


def registered_backbones() -> dict[str, BackboneInfo]:
    return _BACKBONES.all()
