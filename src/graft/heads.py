"""Classifier heads grafted onto a backbone: `linear` or `mlp:4096,4096` (the seed VGG-16 head)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class HeadSpec:
    kind: str = "linear"  # linear | mlp
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    @classmethod
    def parse(cls, text: str, dropout: float = 0.0) -> HeadSpec:
        """'linear' or 'mlp:4096,4096'."""
        kind, _, widths = text.strip().partition(":")
        if kind == "linear" and not widths:
            return cls("linear", (), dropout)
        if kind == "mlp":
            try:
                hidden = tuple(int(w) for w in widths.split(",") if w.strip()) or (512,)
            except ValueError:
                raise ConfigError(
                    f"bad --head {text!r}: widths must be integers, e.g. mlp:4096,4096"
                ) from None
            if any(w <= 0 for w in hidden):
                raise ConfigError(f"bad --head {text!r}: widths must be positive, e.g. mlp:4096,4096")
            return cls("mlp", hidden, dropout)
        raise ConfigError(f"bad --head {text!r}: use 'linear' or 'mlp:WIDTH[,WIDTH...]'")

    def __str__(self) -> str:
        return "linear" if self.kind == "linear" else "mlp:" + ",".join(map(str, self.hidden))


class FeatureNorm(nn.Module):
    """Fixed standardisation of backbone features (statistics of the training set): makes one
    learning rate fit every backbone, whose feature scales differ by orders of magnitude."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> FeatureNorm:
        var = features.float().var(0) if len(features) > 1 else torch.ones_like(self.std)
        self.mean.copy_(features.float().mean(0))
        # shrink each variance toward the average one: a feature that is ~constant on a few
        # training images (a blank background) must not be blown up by 1/std on new images
        self.std.copy_((var + var.mean()).sqrt().clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Head(nn.Module):
    """The grafted head, in named parts: `norm` (FeatureNorm, the features' fixed standardisation),
    `hidden` (an MLP's Linear-ReLU(-Dropout) blocks; a linear head's dropout; else empty) and `fc`
    (the final Linear, one output per class, label or target). Its weights are saved under these
    names (`head.norm.mean`, `head.fc.weight`); `upgrade_head_keys` reads the numbered keys of
    bundles from before (format 2 and older: an nn.Sequential, `head.0.mean`)."""

    def __init__(self, norm: FeatureNorm, hidden: nn.Sequential, fc: nn.Linear) -> None:
        super().__init__()
        self.norm, self.hidden, self.fc = norm, hidden, fc

    def layers(self) -> list[nn.Module]:
        """Every layer in the order a feature vector passes them."""
        return [self.norm, *self.hidden, self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 whatever the body's precision: the head is a sliver of the compute, and a bf16
        # output keeps about 3 significant digits, which ties close scores (a regression's ranking)
        if x.device.type not in ("cpu", "cuda"):  # graft autocasts only there (MPS: never)
            return self.fc(self.hidden(self.norm(x.float())))
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(self.hidden(self.norm(x.float())))


def build_head(spec: HeadSpec, in_features: int, num_classes: int) -> Head:
    hidden: list[nn.Module] = []
    width = in_features
    for size in spec.hidden:  # Linear-ReLU-Dropout blocks, as VGG's classifier
        hidden += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        hidden += [nn.Dropout(spec.dropout)] if spec.dropout else []
        width = size
    if spec.dropout and not spec.hidden:
        hidden.append(nn.Dropout(spec.dropout))
    return Head(FeatureNorm(in_features), nn.Sequential(*hidden), nn.Linear(width, num_classes))


def upgrade_head_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a bundle whose head was an nn.Sequential [FeatureNorm, *hidden, Linear]
    (`head.0.*` ... `head.K.*`) under the named parts' keys; other keys as they are."""
    numbered = [k for k in state if k.startswith("head.") and k.split(".")[1].isdigit()]
    if not numbered:
        return state
    last = max(int(k.split(".")[1]) for k in numbered)

    def renamed(key: str) -> str:
        if key not in numbered:
            return key
        _, index, rest = key.split(".", 2)
        part = "norm" if index == "0" else "fc" if int(index) == last else f"hidden.{int(index) - 1}"
        return f"head.{part}.{rest}"

    return {renamed(k): v for k, v in state.items()}


class GraftModel(nn.Module):
    """Backbone body + new head: the modality's model inputs (normalised images, token ids) in, logits out."""

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        flip_average: bool = False,
        mirror: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.head = head
        # the modality's mirror image of a batch (images: left-right), where its inputs have one;
        # with `flip_average` the head takes the mean of each input's and its mirror's features, as
        # it was trained and tested on with --flip-features or chosen by --tta
        self.mirror = mirror
        self.flip_average = flip_average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x).flatten(1)
        if self.flip_average and self.mirror is not None:
            features = (features + self.body(self.mirror(x)).flatten(1)) / 2
        return self.head(features)
