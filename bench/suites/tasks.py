"""graft's tasks beyond one label per example, on datasets built from ../shared/data, each against
a simple baseline run beside it: one table from one run.

    python -m bench tasks [--only trec6-multi cifar-multi cifar-rotation snli-pairs] [--budget 150]

The datasets, one case each (written under .cache/bench/tasks/ once):
- trec6-multi: TREC-6 questions labelled with their coarse and their fine class together
  ("NUM|NUM:date"): 56 labels, two a question; multi-label.
- cifar-multi: CIFAR-10, 200 training / 100 test images a class, labelled with the class and
  "animal" or "vehicle": 12 labels, two an image (a folder and its labels.csv); multi-label.
- cifar-rotation: the same images, each rotated by a seeded random angle in [-45, 45] degrees (the
  corners filled black); the target is how far it is turned, |angle|: regression. (The signed
  angle cannot be learned from these features: ImageNet training with flips makes pooled features
  nearly mirror-invariant, and a mirror image turned by +a is the image turned by -a; flip
  augmentation would also swap its sign.)
- snli-pairs: SNLI premise/hypothesis pairs (`--text-column premise,hypothesis`), 3 classes.
Rows: the baseline (multi-label: every label its training frequency as a probability, labels over
half of the examples predicted; regression: the training mean; SNLI: the majority class), the linear
probe (`--strategy linear`), and graft's defaults under `--time-budget`. Test numbers from each run's
report.json; the baselines' computed here. Image runs at 96 px.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import BENCH, TEXT, cifar_table
from bench.suites import Context

WORK = BENCH / "tasks"


def trec6_multi() -> tuple[Path, Path]:
    out = WORK / "trec6-multi"
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with open(TEXT / "trec6" / f"{split}.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "labels"])
            writer.writerows([r["text"], f"{r['label']}|{r['fine_label']}"] for r in rows)
    return out / "train.csv", out / "test.csv"


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--budget", type=float, default=150, help="the defaults' --time-budget")


def _graft(ctx: Context, argv: list[str]) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="bench-tasks-")) / "run"
    run = ctx.graft("train", *argv, "--out", str(out), "--json").check()
    return {**(run.report or {}), "measures": run.measures()}


def _labels_of(path: Path, column: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [r[column] for r in csv.DictReader(f)]


def _multi_baseline(train: list[str], test: list[str]) -> dict[str, float]:
    """Every label's training frequency as its probability for every example."""
    from sklearn.metrics import average_precision_score, f1_score

    names = sorted({x for row in train for x in row.split("|")})
    index = {n: j for j, n in enumerate(names)}

    def matrix(rows: list[str]) -> np.ndarray:
        out = np.zeros((len(rows), len(names)))
        for i, row in enumerate(rows):
            for label in row.split("|"):
                if label in index:
                    out[i, index[label]] = 1
        return out

    y_train, y_test = matrix(train), matrix(test)
    prior = np.tile(y_train.mean(0), (len(test), 1))
    present = y_test.sum(0) > 0
    ap = average_precision_score(y_test[:, present], prior[:, present], average="macro")
    predicted = prior >= 0.5
    return {
        "map": float(ap),
        "micro_f1": float(f1_score(y_test, predicted, average="micro", zero_division=0)),
        "subset_accuracy": float((predicted == (y_test > 0)).all(1).mean()),
    }


def _ways(budget: float) -> list[tuple[str, list[str]]]:
    """The two graft rows of every dataset: the linear probe, and the defaults under a budget."""
    return [("linear probe", ["--strategy", "linear"]), (f"defaults, --time-budget {budget:.0f}",
            ["--time-budget", str(budget)])]  # fmt: skip


def _row(run: str, report: dict, keys: tuple[str, ...]) -> dict:
    test = report["test"]
    return {"row": run, **{k: test[k] for k in keys}, "seconds": report["seconds"],
            "strategy": report["strategy"], **report["measures"]}  # fmt: skip


def run_multi(ctx: Context, train_args: list[str], train_labels: list[str],
              test_labels: list[str]) -> list[dict]:  # fmt: skip
    baseline = _multi_baseline(train_labels, test_labels)
    rows = [{"row": "baseline: label frequencies", **baseline}]
    for run, extra in _ways(ctx.options.budget):
        rows.append(_row(run, _graft(ctx, [*train_args, *extra]), ("map", "micro_f1", "subset_accuracy")))
    return rows


IMAGES = ["--image-size", "96"]


def trec6_multi_case(ctx: Context) -> list[dict]:
    """TREC-6 coarse and fine class together: multi-label, against the label frequencies."""
    train, test = trec6_multi()
    return run_multi(ctx, [str(train), "--test", str(test), "--label-column", "labels"],
                     _labels_of(train, "labels"), _labels_of(test, "labels"))  # fmt: skip


def cifar_multi(ctx: Context) -> list[dict]:
    """CIFAR-10 class and animal/vehicle: multi-label, against the label frequencies."""
    train = cifar_table("cifar-multi", "train", 200, False)
    test = cifar_table("cifar-multi", "test", 100, False)
    argv = [str(train), "--test", str(test), "--label-column", "labels", *IMAGES]
    labels = [_labels_of(folder / "labels.csv", "labels") for folder in (train, test)]
    return run_multi(ctx, argv, *labels)


def cifar_rotation(ctx: Context) -> list[dict]:
    """How far each image is turned: regression, against the training mean."""
    train = cifar_table("cifar-rotation", "train", 200, True)
    test = cifar_table("cifar-rotation", "test", 100, True)
    y_train = np.array([float(a) for a in _labels_of(train / "labels.csv", "angle")])
    y_test = np.array([float(a) for a in _labels_of(test / "labels.csv", "angle")])
    rmse = float(np.sqrt(((y_test - y_train.mean()) ** 2).mean()))
    r2 = float(1 - ((y_test - y_train.mean()) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum())
    rows: list[dict] = [{"row": "baseline: the training mean", "r2": r2, "rmse": rmse}]
    argv = [str(train), "--test", str(test), "--label-column", "angle", "--task", "regression", *IMAGES]
    for run, extra in _ways(ctx.options.budget):
        rows.append(_row(run, _graft(ctx, [*argv, *extra]), ("r2", "rmse", "spearman")))
    return rows


def snli_pairs(ctx: Context) -> list[dict]:
    """SNLI premise/hypothesis pairs, 3 classes, against the majority class."""
    train, test = TEXT / "snli" / "train.csv", TEXT / "snli" / "test.csv"
    majority = Counter(_labels_of(train, "label")).most_common(1)[0][0]
    test_labels = _labels_of(test, "label")
    accuracy = sum(label == majority for label in test_labels) / len(test_labels)
    rows: list[dict] = [{"row": f"baseline: the majority class ({majority})", "accuracy": accuracy}]
    argv = [str(train), "--test", str(test), "--text-column", "premise,hypothesis"]
    for run, extra in _ways(ctx.options.budget):
        rows.append(_row(run, _graft(ctx, [*argv, *extra]), ("accuracy", "macro_f1")))
    return rows


CASES = {"trec6-multi": trec6_multi_case, "cifar-multi": cifar_multi, "cifar-rotation": cifar_rotation,
         "snli-pairs": snli_pairs}  # fmt: skip
