"""Test-time flip averaging (--tta): chosen on validation accuracy, recorded in report.json and the
bundle (end to end: tests/test_keep_best.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graft.heads import GraftModel
from graft.training.recipes import choose_flip_tta


class _Val:
    """Two-pixel-wide "images" [[a, b]]: the mirror image is [[b, a]]."""

    def __init__(self, x: torch.Tensor, labels: list[int]) -> None:
        self.x, self.labels = x, torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, device):
        yield torch.arange(len(self)), self.x.to(device)


def _model() -> GraftModel:
    head = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        head[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # logits = features
    return GraftModel(nn.Flatten(), head).eval()


# features [0, 1] -> class 1; averaged with the mirror's [1, 0] -> [0.5, 0.5] -> class 0
IMAGES = torch.tensor([[[[0.0, 1.0]]]] * 4)


def _choose(mode: str, labels: list[int]):
    model, val = _model(), _Val(IMAGES[: len(labels)], labels)
    plain = model(val.x)
    logits, record = choose_flip_tta(mode, model, val, plain)
    return model, logits, record


def test_auto_keeps_flip_averaging_when_validation_accuracy_is_higher_with_it():
    model, logits, record = _choose("auto", [0, 0, 0, 0])
    assert record["flip"] and model.flip_average
    assert record["val_accuracy"] == {"plain": 0.0, "flip": 1.0}
    assert logits.argmax(1).tolist() == [0, 0, 0, 0]  # the validation metrics are the flipped model's


def test_auto_leaves_it_off_when_it_is_not_higher():
    model, logits, record = _choose("auto", [1, 1, 1, 1])
    assert not record["flip"] and not model.flip_average
    assert "not higher" in record["reason"]
    assert logits.argmax(1).tolist() == [1, 1, 1, 1]


def test_none_and_flip_are_obeyed_and_auto_without_validation_stays_off():
    model, _, record = _choose("none", [0, 0])
    assert not record["flip"] and not model.flip_average
    model, _, record = _choose("flip", [1, 1])
    assert record["flip"] and model.flip_average and record["val_accuracy"]["flip"] == 0.0
    model, _, record = _choose("auto", [])
    assert not record["flip"] and not model.flip_average and "no validation" in record["reason"]


def test_text_refuses_tta_flip():
    from graft.config import TrainConfig
    from graft.errors import ConfigError
    from graft.modalities import get_modality

    with pytest.raises(ConfigError, match="--tta flip"):
        get_modality("text").check(TrainConfig(data="x.csv", tta="flip"))
