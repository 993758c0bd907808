"""Accuracy-per-second levers of fine-tuning: test-time flip averaging (--tta), chosen on validation
accuracy and recorded in report.json and the bundle (end to end: tests/test_keep_best.py), and
progressive resizing (--resize)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graft.heads import GraftModel
from graft.training.evaluation import choose_flip_tta


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
    return GraftModel(nn.Flatten(), head, mirror=lambda x: x.flip(3)).eval()


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


def test_auto_leaves_it_off_when_it_is_worse():
    model, logits, record = _choose("auto", [1, 1, 1, 1])
    assert not record["flip"] and not model.flip_average
    assert "(0 fixed, 4 broken;" in record["reason"]
    assert logits.argmax(1).tolist() == [1, 1, 1, 1]


def test_auto_leaves_it_off_when_the_gain_is_within_noise():
    """One example fixed and none broken is higher accuracy, but not beyond one standard error."""
    model = _model()
    unchanged = torch.tensor([[[[2.0, 0.0]]]] * 3)  # class 0 with and without its mirror image
    val = _Val(torch.cat([IMAGES[:1], unchanged]), [0, 0, 0, 0])
    _, record = choose_flip_tta("auto", model, val, model(val.x))
    assert record["val_accuracy"] == {"plain": 0.75, "flip": 1.0}
    assert not record["flip"] and not model.flip_average and "(1 fixed, 0 broken;" in record["reason"]


def test_none_and_flip_are_obeyed_and_auto_without_validation_stays_off():
    model, val = _model(), _Val(IMAGES[:2], [0, 0])
    plain = model(val.x)
    logits, record = choose_flip_tta("none", model, val, plain)
    assert not record["flip"] and logits is plain and not model.flip_average
    model, _, record = _choose("flip", [1, 1])
    assert record["flip"] and model.flip_average and record["val_accuracy"]["flip"] == 0.0
    model, _, record = _choose("auto", [])
    assert not record["flip"] and not model.flip_average and "no validation" in record["reason"]


def test_text_refuses_tta_flip_and_progressive_resizing():
    from graft.config import TrainConfig
    from graft.errors import ConfigError
    from graft.modalities import get_modality

    with pytest.raises(ConfigError, match="--tta flip"):
        get_modality("text").check(TrainConfig(data="x.csv", tta="flip"))
    with pytest.raises(ConfigError, match="--resize progressive"):
        get_modality("text").check(TrainConfig(data="x.csv", resize="progressive"))


def test_progressive_sizes_grow_to_the_full_size_in_multiples_of_8():
    from graft.modalities.image import progressive_sizes

    assert progressive_sizes(96, 4) == [64, 72, 88, 96]
    assert progressive_sizes(224, 4) == [152, 176, 200, 224]
    assert progressive_sizes(224, 1) == [224] and progressive_sizes(100, 2) == [64, 100]
    for full in range(8, 300):  # never above the full size, never shrinking
        for epochs in (2, 3, 5, 10):
            sizes = progressive_sizes(full, epochs)
            assert sizes == sorted(sizes) and max(sizes) == sizes[-1] == full, (full, epochs)


def test_training_batches_follow_the_size_schedule_and_evaluation_keeps_the_full_size():
    import numpy as np

    from graft.backbones._registry import Preprocessing
    from graft.modalities.image import _TrainingImages

    images = [torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8) for _ in range(8)]
    train = _TrainingImages(images, np.arange(8) % 2, Preprocessing(input_size=32), "light")
    any_size = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
    assert train.grow_inputs(3, any_size) == "training crops 24 -> 24 -> 32 px"
    batches = train.batches(4, seed=0, device=torch.device("cpu"))
    shapes = [next(iter(batches(epoch)))[0].shape[-1] for epoch in range(3)]
    assert shapes == [24, 24, 32]
    assert next(train.plain_inputs(8, torch.device("cpu"))).shape[-1] == 32  # statistics: full size
    assert train.grow_inputs(1, any_size) is None and next(iter(batches(0)))[0].shape[-1] == 32
    one_size = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))  # a ViT without dynamic sizes
    assert train.grow_inputs(3, one_size) == "off: the network takes only 32 px inputs"
    assert [next(iter(batches(epoch)))[0].shape[-1] for epoch in range(3)] == [32, 32, 32]
