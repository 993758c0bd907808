"""graft's tasks beyond one label per example, on datasets built from ../shared/data, each against
a simple baseline run beside it: one table from one run.

    python bench/tasks.py [--only trec6-multi cifar-multi cifar-rotation snli-pairs] [--budget 150]

The datasets (written under .cache/bench/tasks/ once):
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
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
TEXT = ROOT.parent / "shared" / "data" / "text"
CIFAR = ROOT / ".cache" / "data" / "cifar10"
WORK = ROOT / ".cache" / "bench" / "tasks"
VEHICLES = {"airplane", "automobile", "ship", "truck"}


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


def _cifar_table(name: str, split: str, per_class: int, rotate: bool) -> Path:
    from PIL import Image

    folder = WORK / name / split
    table = folder / "labels.csv"
    if table.is_file() and table.stat().st_mtime > Path(__file__).stat().st_mtime:  # made by this script
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{name}-{split}")
    rows = []
    for class_dir in sorted(p for p in (CIFAR / split).iterdir() if p.is_dir()):
        for source in sorted(class_dir.iterdir())[:per_class]:
            target = f"{class_dir.name}-{source.stem}.png"
            image = Image.open(source).convert("RGB")
            if rotate:
                angle = rng.uniform(-45, 45)
                image.rotate(angle, resample=Image.BILINEAR).save(folder / target)
                rows.append([target, f"{abs(angle):.2f}"])
            else:
                kind = "vehicle" if class_dir.name in VEHICLES else "animal"
                image.save(folder / target)
                rows.append([target, f"{class_dir.name}|{kind}"])
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "angle" if rotate else "labels"], *rows])
    return folder


def _graft(argv: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-tasks-")) / "run"
    env = os.environ | {"GRAFT_CACHE_DIR": str(WORK / "cache")}
    done = subprocess.run([sys.executable, "-m", "graft", "train", *argv, "--out", str(out), "--json"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads((out / "report.json").read_text())


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


def _row(dataset: str, run: str, report: dict, keys: tuple[str, ...]) -> dict:
    test = report["test"]
    return {"dataset": dataset, "run": run, **{k: test[k] for k in keys},
            "seconds": report["seconds"], "strategy": report["strategy"]}  # fmt: skip


def run_multi(
    name: str, train_args: list[str], train_labels: list[str], test_labels: list[str], budget: float
) -> list[dict]:
    baseline = _multi_baseline(train_labels, test_labels)
    rows = [{"dataset": name, "run": "baseline: label frequencies", **baseline}]
    for run, extra in _ways(budget):
        rows.append(_row(name, run, _graft([*train_args, *extra]), ("map", "micro_f1", "subset_accuracy")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["trec6-multi", "cifar-multi", "cifar-rotation", "snli-pairs"]
    parser.add_argument("--only", nargs="*", default=names)
    parser.add_argument("--budget", type=float, default=150)
    args = parser.parse_args()
    rows: list[dict] = []
    images = ["--image-size", "96"]
    if "trec6-multi" in args.only:
        train, test = trec6_multi()
        rows += run_multi("trec6-multi", [str(train), "--test", str(test), "--label-column", "labels"],
                          _labels_of(train, "labels"), _labels_of(test, "labels"), args.budget)  # fmt: skip
    if "cifar-multi" in args.only:
        train = _cifar_table("cifar-multi", "train", 200, False)
        test = _cifar_table("cifar-multi", "test", 100, False)
        argv = [str(train), "--test", str(test), "--label-column", "labels", *images]
        rows += run_multi("cifar-multi", argv, _labels_of(train / "labels.csv", "labels"),
                          _labels_of(test / "labels.csv", "labels"), args.budget)  # fmt: skip
    if "cifar-rotation" in args.only:
        train = _cifar_table("cifar-rotation", "train", 200, True)
        test = _cifar_table("cifar-rotation", "test", 100, True)
        y_train = np.array([float(a) for a in _labels_of(train / "labels.csv", "angle")])
        y_test = np.array([float(a) for a in _labels_of(test / "labels.csv", "angle")])
        rmse = float(np.sqrt(((y_test - y_train.mean()) ** 2).mean()))
        r2 = float(1 - ((y_test - y_train.mean()) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum())
        baseline = {"run": "baseline: the training mean", "r2": r2, "rmse": rmse}
        rows.append({"dataset": "cifar-rotation", **baseline})
        argv = [str(train), "--test", str(test), "--label-column", "angle", "--task", "regression", *images]
        for run, extra in _ways(args.budget):
            rows.append(_row("cifar-rotation", run, _graft([*argv, *extra]), ("r2", "rmse", "spearman")))
    if "snli-pairs" in args.only:
        train, test = TEXT / "snli" / "train.csv", TEXT / "snli" / "test.csv"
        counts = Counter(_labels_of(train, "label"))
        majority = counts.most_common(1)[0][0]
        test_labels = _labels_of(test, "label")
        accuracy = sum(label == majority for label in test_labels) / len(test_labels)
        name = f"baseline: the majority class ({majority})"
        rows.append({"dataset": "snli-pairs", "run": name, "accuracy": accuracy})
        argv = [str(train), "--test", str(test), "--text-column", "premise,hypothesis"]
        for run, extra in _ways(args.budget):
            rows.append(_row("snli-pairs", run, _graft([*argv, *extra]), ("accuracy", "macro_f1")))
    keys = ["map", "micro_f1", "subset_accuracy", "r2", "rmse", "spearman", "accuracy", "macro_f1"]
    print("| dataset | run | " + " | ".join(keys) + " | strategy | seconds |")
    print("| --- | --- | " + " | ".join("---" for _ in keys) + " | --- | --- |")
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else "" for k in keys]
        tail = [str(r.get("strategy", "")), f"{r['seconds']:.0f}" if "seconds" in r else ""]
        print(f"| {r['dataset']} | {r['run']} | " + " | ".join(cells) + " | " + " | ".join(tail) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
