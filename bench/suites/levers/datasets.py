"""The levers suite's datasets, each as the `graft train` arguments that name its data (built once
under .cache/bench/wise_ft from ../shared/data and .cache/data/cifar10):
- cifar10-100: CIFAR-10, 100 training images a class, 50 a class to test, 96 px.
- catdog: cats against dogs, 245 training and 153 more as validation (the closed photo case's
  sizes), 150 a class to test, 96 px.
- planefrog: airplanes against frogs, the same sizes: an easy pair, where the probe is hard to
  beat (the closed photo case: `auto` fine-tuned 4 epochs for nothing).
- cifar-multi: the tasks suite's multi-label CIFAR set (12 labels), mAP.
- trec6: TREC-6 (5,452 questions; its 500 test questions).
- sst2-3k: 3,000 SST-2 training sentences drawn with seed 0; its dev set (872) to test.
- snli-3k: 3,000 SNLI pairs drawn with seed 0 (`--text-column premise,hypothesis`); 2,000 of its
  test pairs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from bench.data import BENCH, TEXT, cifar_table, table_sample
from bench.data import DATA as CIFAR

WORK = BENCH / "wise_ft"
IMAGES = ["--image-size", "96"]


def _copy_images(split: str, classes: list[str], start: int, count: int, into: Path) -> None:
    for name in classes:
        files = sorted((CIFAR / split / name).iterdir())[start : start + count]
        (into / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, into / name / f.name)


def _image_set(name: str, classes: list[str], train: int, val: int, test: int) -> list[str]:
    root = WORK / name
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        _copy_images("train", classes, 0, train, root / "train")
        if val:
            _copy_images("train", classes, train, val, root / "val")
        _copy_images("test", classes, 0, test, root / "test")
        (root / "done").write_text("")
    argv = [str(root / "train"), "--test", str(root / "test"), *IMAGES]
    return argv + (["--val", str(root / "val")] if val else [])


def _multi_set(split: str) -> Path:
    """The tasks suite's cifar-multi folder of a split, built on first use."""
    return cifar_table("cifar-multi", split, 200 if split == "train" else 100, rotate=False)


def datasets() -> dict[str, Callable[[], list[str]]]:
    cats = ["cat", "dog"]
    sst2 = table_sample(TEXT / "sst2" / "train.csv", WORK / "sst2-3k" / "train.csv", 3000)
    snli = table_sample(TEXT / "snli" / "train.csv", WORK / "snli-3k" / "train.csv", 3000)
    snli_test = table_sample(TEXT / "snli" / "test.csv", WORK / "snli-3k" / "test.csv", 2000)
    classes = sorted(p.name for p in (CIFAR / "train").iterdir()) if (CIFAR / "train").is_dir() else []
    return {
        "cifar10-100": lambda: _image_set("cifar10-100", classes, 100, 0, 50),
        "catdog": lambda: _image_set("catdog", cats, 123, 77, 150),
        "planefrog": lambda: _image_set("planefrog", ["airplane", "frog"], 123, 77, 150),
        "cifar-multi": lambda: [str(_multi_set("train")), "--test", str(_multi_set("test")),
                                "--label-column", "labels", *IMAGES],
        "trec6": lambda: [str(TEXT / "trec6" / "train.csv"), "--test", str(TEXT / "trec6" / "test.csv")],
        "sst2-3k": lambda: [str(sst2), "--test", str(TEXT / "sst2" / "dev.csv")],
        "snli-3k": lambda: [str(snli), "--test", str(snli_test), "--text-column", "premise,hypothesis"],
    }  # fmt: skip
