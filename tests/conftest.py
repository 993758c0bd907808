"""Shared test setup: offline, no real caches, single-threaded torch, tiny synthetic image folders."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

# The tests use tiny tensors (a 3-class head on a few dozen feature vectors): intra-op threads buy
# nothing there, and on busy cores their spin-waiting makes every step ~10x slower.
torch.set_num_threads(1)


# `.ci/run` sets GRAFT_CI=1 after installing everything the suite uses (Chromium included): there a
# test that cannot run is a failure, not a skip that hides one.
IN_CI = os.environ.get("GRAFT_CI") == "1"


def unavailable(reason: str) -> None:
    """Skip a test whose tool is missing here, with the reason; under CI fail it instead."""
    if IN_CI:
        pytest.fail(f"{reason}; CI installs it, so it must be here (GRAFT_CI=1)")
    pytest.skip(reason)


def spy_on_training_loops(mp: pytest.MonkeyPatch) -> list[float]:
    """The time.perf_counter() at which each of the recipes' training loops ended, appended as the
    run goes (the time-budget tests measure training from outside with it)."""
    import time

    from graft.training import finetune, loop, probe, timing

    ends: list[float] = []
    real_fit = loop.fit

    def timed_fit(*args, **kwargs):
        history = real_fit(*args, **kwargs)
        ends.append(time.perf_counter())
        return history

    for recipe in (probe, finetune, timing):  # the probe's head, fine-tuning, the timed steps
        mp.setattr(recipe, "fit", timed_fit)
    return ends


def hide_module(mp: pytest.MonkeyPatch, name: str) -> None:
    """`import name` raises ImportError, as where the package is not installed."""
    import builtins

    real_import = builtins.__import__

    def without(module: str, *args: Any, **kwargs: Any) -> Any:
        if module == name:
            raise ImportError(module)
        return real_import(module, *args, **kwargs)

    mp.setattr(builtins, "__import__", without)


def isolate(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """Point every cache graft, torch and Hugging Face could touch into `root`, and force offline."""
    root.mkdir(parents=True, exist_ok=True)
    mp.setenv("GRAFT_OFFLINE", "1")
    mp.setenv("GRAFT_CACHE_DIR", str(root / "graft-cache"))
    mp.setenv("TORCH_HOME", str(root / "torch"))
    mp.setenv("HF_HOME", str(root / "hf"))
    # huggingface_hub reads HF_HOME once, at import: follow the new value if it is already loaded
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        mp.setattr(constants, "HF_HOME", str(root / "hf"))
        mp.setattr(constants, "HF_HUB_CACHE", str(root / "hf" / "hub"))
    # graft's CLI replaces warnings.formatwarning: put it back after each test
    mp.setattr(warnings, "formatwarning", warnings.formatwarning)
    return root


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory: pytest.TempPathFactory):
    """Session-wide isolation, so module-scoped fixtures (which start before per-test ones) are
    offline and cache into a temporary folder too."""
    with pytest.MonkeyPatch.context() as mp:
        yield isolate(mp, tmp_path_factory.mktemp("session-env"))


@pytest.fixture(autouse=True)
def _test_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Per-test isolation: offline, and a fresh GRAFT_CACHE_DIR / TORCH_HOME / HF_HOME."""
    return isolate(monkeypatch, tmp_path / "env")


# --------------------------------------------------------------------------- synthetic images

CLASSES = ("blue", "green", "red")  # sorted, as ImageFolder orders them
_BASE = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def synthetic_image(label: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """An easy image of class `label`: a distinct colour and pattern plus noise."""
    pixels = np.array(_BASE[label], dtype=np.float64)[None, None] + rng.normal(0, 20, (size, size, 3))
    out = np.clip(pixels, 0, 255).astype(np.uint8)
    if label == "red":
        out[::4] = 255  # horizontal white stripes
    elif label == "green":
        out[:, ::4] = 0  # vertical black stripes
    else:
        out[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255  # a white square
    return out


@pytest.fixture
def tiny_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_pick's tiny backbones in the registry, for one test (the pick's and auto's tests)."""
    from test_pick import register_tiny

    register_tiny(monkeypatch)


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image folder of coloured classes, one per test module."""
    return make_image_folder(tmp_path_factory.mktemp("colours") / "data", per_class=12, seed=0)


def make_image_folder(root: Path, per_class: int, seed: int) -> Path:
    """root/<class>/NN.png|jpg: `per_class` synthetic 32x32 images per class, PNG and JPEG alternating."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(synthetic_image(label, rng)).save(root / label / f"{i:02d}.{ext}")
    return root


def write_image_table(root: Path, n: int, seed: int) -> Path:
    """root/NNN.png and root/labels.csv (`file,label,labels,brightness`): each image's colour as a
    class (single), the colour and "warm" for red as labels (multi), its brightness (regression)."""
    import csv

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = ["red", "green", "blue"][i % 3]
        pixels = synthetic_image(colour, rng)
        Image.fromarray(pixels).save(root / f"{i:03d}.png")
        labels = f"{colour}|warm" if colour == "red" else colour
        rows.append([f"{i:03d}.png", colour, labels, f"{pixels.mean() / 255:.4f}"])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "label", "labels", "brightness"], *rows])
    return root


def fit_scored(model: Any, scores: list[float], *callbacks: Any) -> list[dict[str, Any]]:
    """The one loop on random data for len(scores) epochs, each epoch's row given `scores` as its
    validation accuracy (before `callbacks` see it): for the callbacks that choose by it."""
    from graft.training.loop import Callback, LoopConfig, fit
    from graft.training.strategies import HEAD, Stage

    class Scores(Callback):
        def __init__(self) -> None:
            self.scores = iter(scores)

        def on_epoch_end(self, loop: Any, row: dict[str, Any]) -> None:
            row["val_accuracy"] = next(self.scores)

    x, y = torch.randn(16, model.in_features), torch.randint(0, model.out_features, (16,))
    return fit(
        model,
        [(HEAD, list(model.parameters()))],
        lambda e: Stage({HEAD: 1.0}),
        lambda e: [(x, y)],
        1,
        LoopConfig(epochs=len(scores), lr=0.1),
        callbacks=[Scores(), *callbacks],
    )


GOOD = ["great", "wonderful", "lovely", "excellent", "superb", "delightful"]
BAD = ["awful", "terrible", "boring", "dreadful", "poor", "bad"]
NOUNS = ["movie", "film", "plot", "acting", "story", "ending"]


def write_reviews(path: Path, n: int, seed: int) -> Path:
    """A `review,sentiment` CSV of n one-line reviews whose sentiment word gives the label."""
    import csv
    import random

    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            word = rng.choice(GOOD if label == "pos" else BAD)
            writer.writerow([f"the {rng.choice(NOUNS)} was {word} and so was the {rng.choice(NOUNS)}", label])
    return path

