"""The numbers a change must not make worse: each one `graft` process as a user runs it (wall time
includes process start), a cold cache. The commands and data are fixed so rows stay comparable:

- demo: `graft demo --json` (digits, 10 labels per class);
- trec6: TREC-6 with default settings, seed 0 (train.csv -> test.csv);
- finetune_1, finetune_5: `--strategy finetune --image-size 96 --epochs 1 / 5` on the first 100
  (train) / 50 (test) CIFAR-10 JPEGs per class;
- linear_96: `--strategy linear --image-size 96` on the first 500 / 100 images per class.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.data import DATA, TEXT, require_data, subset_folder
from bench.suites import Context


def _graft(ctx: Context, *args: str) -> tuple[dict[str, Any], Any]:
    out = ctx.work / "run"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's folder: graft refuses to replace it
    run = ctx.graft(*args, "--out", str(out), "--json").check()
    return run.last_json(), run


def demo(ctx: Context) -> list[dict[str, Any]]:
    """`graft demo --json`: transfer and scratch accuracy."""
    summary, run = _graft(ctx, "demo")
    return [run.measures(transfer=summary["transfer"]["accuracy"], scratch=summary["scratch"]["accuracy"])]


def trec6(ctx: Context) -> list[dict[str, Any]]:
    """TREC-6, default settings, seed 0: test error."""
    trec = TEXT / "trec6"
    summary, run = _graft(ctx, "train", str(trec / "train.csv"), "--test", str(trec / "test.csv"))
    return [run.measures(test_error=1 - summary["test_accuracy"])]


def _cifar(per_class: int, test_per_class: int) -> tuple[Path, Path]:
    require_data(DATA / "train", DATA / "test")
    train = subset_folder(DATA / "train", per_class, f"cifar10-train-{per_class}")
    return train, subset_folder(DATA / "test", test_per_class, f"cifar10-test-{test_per_class}")


def _finetune(ctx: Context, epochs: int) -> list[dict[str, Any]]:
    train, test = _cifar(100, 50)
    args = ["train", str(train), "--test", str(test), "--strategy", "finetune", "--image-size", "96"]
    summary, run = _graft(ctx, *args, "--epochs", str(epochs))
    return [run.measures(test_accuracy=summary["test_accuracy"])]


def finetune_1(ctx: Context) -> list[dict[str, Any]]:
    """CIFAR-10 100/50 per class, 96 px, finetune --epochs 1: test accuracy."""
    return _finetune(ctx, 1)


def finetune_5(ctx: Context) -> list[dict[str, Any]]:
    """CIFAR-10 100/50 per class, 96 px, finetune --epochs 5: test accuracy."""
    return _finetune(ctx, 5)


def linear_96(ctx: Context) -> list[dict[str, Any]]:
    """CIFAR-10 500/100 per class, 96 px, the linear probe: test accuracy."""
    train, test = _cifar(500, 100)
    args = ["train", str(train), "--test", str(test), "--strategy", "linear", "--image-size", "96"]
    summary, run = _graft(ctx, *args)
    return [run.measures(test_accuracy=summary["test_accuracy"])]


CASES = {
    "demo": demo, "trec6": trec6, "finetune_1": finetune_1, "finetune_5": finetune_5, "linear_96": linear_96,
}  # fmt: skip
