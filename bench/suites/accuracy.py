"""The numbers a change must not make worse: each one `graft` process as a user runs it (wall time
includes process start), a cold cache. The commands and data are fixed so rows stay comparable:

- demo: `graft demo --json` (digits, 10 labels per class);
- trec6: TREC-6 with default settings, seed 0 (train.csv -> test.csv);
- finetune_1, finetune_5: `--strategy finetune --image-size 96 --epochs 1 / 5` on the first 100
  (train) / 50 (test) CIFAR-10 JPEGs per class;
- linear_96: `--strategy linear --image-size 96` on the first 500 / 100 images per class.

Run only when named (`--only`), the longer measurements of the numbers page:

- cifar10_finetune_30m: all 50,000 CIFAR-10 training images, `--strategy finetune --time-budget
  1800 --image-size 96`, the 10,000 test images;
- compare_cifar10: `graft compare` on all the training images at 10 / 50 / 250 labels per class,
  64 px, the first 100 test images per class; the linear probe only (`--methods linear`: the
  figure is the probe's; fine-tuning and scratch add about half an hour);
- sst2_linear: SST-2 (dev.csv validates, test.csv tests), `--strategy linear`, seed 0, with
  `--feature-layers auto` (the default) and `--feature-layers 1`;
- trec6_seeds: TREC-6 with default settings, seeds 0, 1 and 2;
- batch_lr_rule: the LR rule of a GPU's larger fine-tuning batch (`training/sizing.py`), measured
  on the CPU (accuracy does not depend on the device): `--strategy finetune --image-size 32
  --epochs 3` on the first 200 (train) / 100 (test) CIFAR-10 JPEGs per class, seeds 0, 1, 2, three
  arms: batch 64 at the default LR 1e-3, batch 256 at 2e-3 (square-root rule) and at 4e-3 (linear
  rule); a row per run, then each arm's mean test accuracy and its standard error over the seeds.
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


def cifar10_finetune_30m(ctx: Context) -> list[dict[str, Any]]:
    """All of CIFAR-10, 96 px, finetune --time-budget 1800: test accuracy."""
    require_data(DATA / "train", DATA / "test")
    args = ["train", str(DATA / "train"), "--test", str(DATA / "test"), "--strategy", "finetune"]
    summary, run = _graft(ctx, *args, "--time-budget", "1800", "--image-size", "96")
    report = run.report or {}
    probe = [row["val_accuracy"] for row in report.get("history", []) if row.get("epoch") == 0]
    return [run.measures(test_accuracy=summary["test_accuracy"], probe_val=probe[0] if probe else None)]


def compare_cifar10(ctx: Context) -> list[dict[str, Any]]:
    """graft compare, CIFAR-10 at 64 px, 10 / 50 / 250 labels per class: the probe's test accuracy."""
    require_data(DATA / "train", DATA / "test")
    test = subset_folder(DATA / "test", 100, "cifar10-test-100")
    args = ["compare", str(DATA / "train"), "--test", str(test), "--labels-per-class", "10,50,250"]
    summary, run = _graft(ctx, *args, "--image-size", "64", "--methods", "linear")
    return [{"row": f"{r['method']}, {r['labels_per_class']}/class", "method": r["method"],
             "labels_per_class": r["labels_per_class"], "test_accuracy": r["test_accuracy"], **run.measures()}
            for r in summary["results"]]  # fmt: skip


def sst2_linear(ctx: Context) -> list[dict[str, Any]]:
    """SST-2, the linear probe, --feature-layers auto and 1: dev and test accuracy."""
    rows = []
    for layers in ("auto", "1"):
        args = ["train", str(TEXT / "sst2"), "--strategy", "linear", "--seed", "0"]
        summary, run = _graft(ctx, *args, "--feature-layers", layers)
        kept = ((run.report or {}).get("preprocessing") or {}).get("layers")
        rows.append(run.measures(row=f"--feature-layers {layers}", dev_accuracy=summary["accuracy"],
                                 test_accuracy=summary["test_accuracy"], layers_kept=kept))  # fmt: skip
    return rows


def trec6_seeds(ctx: Context) -> list[dict[str, Any]]:
    """TREC-6, default settings, seeds 0, 1, 2: test error of each."""
    trec = TEXT / "trec6"
    rows = []
    for seed in ("0", "1", "2"):
        args = ["train", str(trec / "train.csv"), "--test", str(trec / "test.csv"), "--seed", seed]
        summary, run = _graft(ctx, *args)
        rows.append(run.measures(row=f"seed {seed}", test_error=1 - summary["test_accuracy"]))
    return rows


LR_RULE_ARMS = (("batch 64, LR 1e-3", 64, 1e-3), ("batch 256, sqrt rule (LR 2e-3)", 256, 2e-3),
                ("batch 256, linear rule (LR 4e-3)", 256, 4e-3))  # fmt: skip
LR_RULE_SEEDS = ("0", "1", "2")


def batch_lr_rule(ctx: Context) -> list[dict[str, Any]]:
    """CIFAR-10 200/100 per class, 32 px, finetune 3 epochs: batch 64 vs 256 (sqrt / linear LR), 3 seeds."""
    train, test = _cifar(200, 100)
    rows: list[dict[str, Any]] = []
    for arm, batch, lr in LR_RULE_ARMS:
        accuracies = []
        for seed in LR_RULE_SEEDS:
            args = ["train", str(train), "--test", str(test), "--strategy", "finetune", "--image-size", "32"]
            args += ["--epochs", "3", "--batch-size", str(batch), "--lr", str(lr), "--seed", seed]
            summary, run = _graft(ctx, *args)
            accuracies.append(summary["test_accuracy"])
            rows.append(run.measures(row=f"{arm}, seed {seed}", test_accuracy=accuracies[-1]))
            print(rows[-1], flush=True)
        rows.append({"row": f"{arm}: mean of {len(accuracies)}", **mean_and_se(accuracies)})
    return rows


def mean_and_se(values: list[float]) -> dict[str, float]:
    """The mean and its standard error (the sample standard deviation over sqrt(n))."""
    n = len(values)
    mean = sum(values) / n
    spread = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"test_accuracy": mean, "standard_error": spread / n**0.5}


DEFAULT_CASES = ("demo", "trec6", "finetune_1", "finetune_5", "linear_96")  # what a bare run runs
CASES = {
    "demo": demo, "trec6": trec6, "finetune_1": finetune_1, "finetune_5": finetune_5, "linear_96": linear_96,
    "cifar10_finetune_30m": cifar10_finetune_30m, "compare_cifar10": compare_cifar10,
    "sst2_linear": sst2_linear, "trec6_seeds": trec6_seeds, "batch_lr_rule": batch_lr_rule,
}  # fmt: skip
