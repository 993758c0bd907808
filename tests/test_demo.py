"""Tests for graft.demo: the digits splits, a small `graft demo --json` (fast), and the full
pretrained-vs-scratch demo (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graft
from graft.cli import main
from graft.data import load_digits_images
from graft.demo import DemoConfig, digits_splits, run_demo


@pytest.fixture(scope="module")
def digit_index() -> dict[bytes, int]:
    """Each digits image's bytes -> its index in the data set (all 1,797 images are distinct)."""
    images, _, _ = load_digits_images()
    index = {image.tobytes(): i for i, image in enumerate(images)}
    assert len(index) == len(images) == 1797
    return index


def _indices(split, digit_index) -> np.ndarray:
    return np.array([digit_index[image.tobytes()] for image in split.sources])


def test_digits_splits_sizes_balance_and_disjointness(digit_index):
    """10 labels per class: 100 train, 100 val, 500 test images, 10 (50) of each digit, no overlap."""
    splits = digits_splits(10, 0)
    assert splits.classes == tuple(str(d) for d in range(10))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 100, 500)
    assert np.bincount(splits.train.labels, minlength=10).tolist() == [10] * 10
    assert np.bincount(splits.val.labels, minlength=10).tolist() == [10] * 10
    assert np.bincount(splits.test.labels, minlength=10).tolist() == [50] * 10
    train, val, test = (_indices(s, digit_index) for s in (splits.train, splits.val, splits.test))
    assert len(set(train)) == 100 and len(set(val)) == 100 and len(set(test)) == 500
    assert not set(train) & set(val)
    assert not set(train) & set(test)
    assert not set(val) & set(test)
    _, labels, _ = load_digits_images()
    for split, idx in ((splits.train, train), (splits.val, val), (splits.test, test)):
        assert np.array_equal(labels[idx], split.labels)  # each image keeps its own label
    assert all(image.dtype == np.uint8 and image.shape == (8, 8) for image in splits.train.sources)


def test_digits_test_split_is_fixed(digit_index):
    """The held-out 500 are the same whatever the seed or labels per class; the training draw is not."""
    a, b = digits_splits(10, 0), digits_splits(5, 7)
    assert np.array_equal(_indices(a.test, digit_index), _indices(b.test, digit_index))
    assert np.array_equal(a.test.labels, b.test.labels)
    assert len(b.train) == 50
    c = digits_splits(10, 1)
    assert not np.array_equal(_indices(a.train, digit_index), _indices(c.train, digit_index))


def test_digits_splits_reproducible(digit_index):
    """The same seed draws the same training and validation images."""
    a, b = digits_splits(10, 3), digits_splits(10, 3)
    assert np.array_equal(_indices(a.train, digit_index), _indices(b.train, digit_index))
    assert np.array_equal(_indices(a.val, digit_index), _indices(b.val, digit_index))


def test_cli_demo_json_small(tmp_path, capsys):
    """`graft demo --json` (the README's first command) at small sizes, in the default suite: exit 0,
    the last stdout line is one JSON object; the linear head on pretrained features beats chance on
    the fixed 500 test digits by far, the scratch baseline trained, and the run folder is a bundle
    that predicts the digits."""
    out = tmp_path / "demo"
    code = main(["demo", "--json", "--labels-per-class", "2", "--image-size", "32", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert (result["test_images"], result["labels_per_class"]) == (500, 2)
    assert result["backbone"] == "efficientnet_lite0" and result["run_dir"] == str(out)
    assert result["transfer"]["accuracy"] > 0.3, result  # chance is 0.1; 0.65 when written
    assert result["scratch"]["epochs"] >= 1 and result["transfer"]["seconds"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["accuracy"] == result["transfer"]["accuracy"] and report["test"]["n"] == 500
    test = digits_splits(2, 0).test
    predicted = graft.load(out, device="cpu").predict(list(test.sources[:100]))
    truth = [str(label) for label in test.labels[:100]]
    assert np.mean([a == b for a, b in zip(predicted, truth, strict=True)]) > 0.3


@pytest.mark.slow
def test_full_demo_pretraining_beats_scratch(tmp_path):
    """The whole demo, offline: ImageNet features + a linear head beat the same net from scratch."""
    result = run_demo(DemoConfig(out=str(tmp_path / "demo")), log=lambda line: None)
    assert result["test_images"] == 500
    assert result["labels_per_class"] == 10
    assert result["backbone"] == "efficientnet_lite0"
    transfer, scratch = result["transfer"], result["scratch"]
    assert transfer["accuracy"] > 0.8
    assert transfer["accuracy"] > scratch["accuracy"] + 0.1
    assert scratch["epochs"] >= 2
    assert (tmp_path / "demo" / "graft.json").is_file()
    assert (tmp_path / "demo" / "model.safetensors").is_file()
