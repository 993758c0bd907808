"""Classification metrics (scikit-learn) and the run's plots (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "most_confused": most_confused(confusion_matrix(y_true, y_pred, labels=labels), classes),
    }


def validation_row(logits: Any, labels: Any, classes: Sequence[str]) -> dict[str, float]:
    """The per-epoch validation numbers of the history: loss, accuracy, macro-F1."""
    import torch

    # numpy, not scikit-learn: this runs every epoch (hundreds of times in a probe), and
    # sklearn's input validation costs ~45 ms a call; the numbers are the same as its macro-F1
    # with zero_division=0 over every class
    true, predicted = labels.numpy(), logits.argmax(1).numpy()
    k = len(classes)
    cm = np.bincount(true * k + predicted, minlength=k * k).reshape(k, k).astype(np.float64)
    hits = np.diag(cm)
    precision = np.divide(hits, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    recall = np.divide(hits, cm.sum(1), out=np.zeros(k), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    accuracy = float(hits.sum() / max(1, len(true)))
    return {"val_loss": loss, "val_accuracy": accuracy, "val_macro_f1": float(f1.mean()) if k else 0.0}


def most_confused(cm: np.ndarray, classes: Sequence[str], top: int = 5) -> list[dict[str, Any]]:
    """fastai's interpretation aid: the (true, predicted) pairs the model mixes up most."""
    off = np.array(cm, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [
        {"true": classes[t], "predicted": classes[p], "count": int(off[t, p])}
        for t, p in pairs
        if off[t, p] > 0
    ]


# Class names are users' words, in any script: after DejaVu Sans (Latin, Greek, Cyrillic), the
# first of these CJK fonts the machine has fills in the glyphs it lacks (matplotlib >= 3.6 falls
# back per glyph along the family list).
CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Microsoft YaHei",
    "PingFang SC",
    "Hiragino Sans",
    "Apple SD Gothic Neo",
    "Malgun Gothic",
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on servers without a display
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", *(f for f in CJK_FONTS if f in installed)]
    return plt


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> None:
    plt = _pyplot()
    matrix = np.asarray(cm)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90 if len(classes) > 6 else 0)
    ax.set_yticks(ticks, classes)
    if len(classes) <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v > threshold else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_predicted_against_true(points: dict[str, list[float]], target: str, path: Path, split: str) -> None:
    """Regression: each example's prediction against its true value, and the line of perfect ones."""
    plt = _pyplot()
    true, predicted = np.asarray(points["true"]), np.asarray(points["predicted"])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, predicted, s=8, alpha=0.5)
    if len(true):
        low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"true {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(split)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(history: Sequence[dict[str, Any]], path: Path, monitor: str = "val_accuracy") -> None:
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    if all("val_loss" in row for row in history):
        left.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [row.get(monitor, np.nan) for row in history], marker="o", label=monitor[4:])
    if monitor == "val_accuracy":
        right.plot(epochs, [row.get("val_macro_f1", np.nan) for row in history], marker="o", label="macro-F1")
    right.set_xlabel("epoch")
    right.set_title("validation")
    from matplotlib.ticker import MaxNLocator

    for axis in (left, right):  # epochs are whole numbers
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
