"""Multi-label classification: any number of labels per example (0/1 indicators, one column per
label). Sigmoid binary cross-entropy with a positive weight per label; monitored by mAP (the mean
over labels of average precision, threshold-free); the decision threshold of each label is tuned
on validation to its best F1 and saved with the bundle.

Positive weights: sqrt(negatives / positives) per label, between 1 and MAX_POS_WEIGHT. Rare labels
otherwise learn to be always off; the full ratio (1:1000 for a rare tag) makes their gradients
dominate and the square root is the usual softening (as inverse-square-root class frequencies in
long-tailed classification); thresholds tuned on validation then fix what weighting leaves.

Its rules elsewhere: `graft compare` sizes count examples per label: a size of N draws examples
until every label has at least N positives among them (all it has, if fewer), the rarest label
first, so N x labels examples at most; `--tta auto` keeps flip averaging when validation mAP rises
by over one paired-bootstrap standard error (`Task.keeps_flip`); `auto` keeps a probe whose
validation 1 - mAP is within the larger of 1% and two standard errors of mAP, each label's AP
taken as a proportion over its positives, sqrt(AP(1 - AP) / positives), averaged over the labels
(the binomial approximation of an AP's variance, Boyd et al. 2013).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import DataError
from .base import Headroom, LossFn, RawLabel, Task, finite, metrics_table

if TYPE_CHECKING:
    import torch

MAX_POS_WEIGHT = 10.0
DEFAULT_THRESHOLD = 0.5


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of one label (scikit-learn's definition, without its per-call overhead:
    this runs after every epoch); NaN when the label has no positive example."""
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    # ties: scikit-learn scores a run of equal scores once, at its end
    last_of_run = np.r_[scores[order][1:] != scores[order][:-1], True]
    recall_steps = np.diff(np.r_[0.0, (np.cumsum(hits) / n_pos)[last_of_run]])
    return float((recall_steps * precision_at[last_of_run]).sum())


def f1_at(scores: np.ndarray, positives: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    tp = int((predicted & positives).sum())
    denominator = int(predicted.sum()) + int(positives.sum())
    return 2 * tp / denominator if denominator else 0.0


def best_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    """The threshold of best F1 on these examples (DEFAULT_THRESHOLD without a positive); midway
    between neighbouring scores, so the choice does not sit on a validation example."""
    if not positives.any():
        return DEFAULT_THRESHOLD
    ordered = np.unique(scores)
    candidates = np.r_[(ordered[:-1] + ordered[1:]) / 2, DEFAULT_THRESHOLD] if len(ordered) > 1 else ordered
    f1 = [f1_at(scores, positives, t) for t in candidates]
    return float(candidates[int(np.argmax(f1))])


class MultiLabel(Task):
    name: ClassVar[str] = "multi"
    output_meaning: ClassVar[str] = (
        "float32 (batch, labels): each label's sigmoid probability, in graft.classes order; a label "
        "applies at or above its threshold (graft.bundle: task.state.thresholds)"
    )
    monitor: ClassVar[str] = "map"
    monitor_short: ClassVar[str] = "val_mAP"
    monitor_name: ClassVar[str] = "mAP"
    monitor_label: ClassVar[str] = "mAP (higher is better)"
    describe: ClassVar[str] = "multi-label classification"
    size_unit: ClassVar[str] = "per label"
    size_axis: ClassVar[str] = "labelled examples per label (each label's positives, at least)"
    size_column: ClassVar[str] = "examples/label"

    @classmethod
    def from_raw(cls, raw: Sequence[RawLabel], columns: Sequence[str], separator: str) -> Task:
        if raw and isinstance(raw[0], tuple):  # one 0/1 column per label
            return cls(tuple(columns), {"columns": True})
        names = sorted({part for r in raw for part in _split(str(r), separator)})
        return cls(tuple(names), {"separator": separator})

    def encode(self, raw: RawLabel) -> list[float]:
        if isinstance(raw, tuple):
            if any(c not in ("0", "1", "0.0", "1.0") for c in raw):
                raise ValueError(f"labels {raw} are not all 0 or 1")
            return [float(c) for c in raw]
        row = [0.0] * len(self.names)
        for part in _split(str(raw), self.state.get("separator", "|")):
            if part not in self._index:
                raise ValueError(f"label {part!r} is not among the training labels")
            row[self._index[part]] = 1.0
        return row

    @cached_property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.names)}

    def check(self, labels: np.ndarray, unit: str) -> None:
        counts = np.asarray(labels).sum(0)
        never = [self.names[i] for i in np.flatnonzero(counts == 0)]
        if never:
            shown = ", ".join(never[:8])
            raise DataError(f"no training {unit} carries the label(s) {shown}: add some or remove the label")

    def fit(self, labels: np.ndarray, options: dict[str, Any]) -> Task:
        labels = np.asarray(labels, dtype=np.float64)
        positives = labels.sum(0)
        ratio = (len(labels) - positives) / np.maximum(positives, 1)
        weights = np.clip(np.sqrt(ratio), 1.0, MAX_POS_WEIGHT)
        return type(self)(self.names, self.state | {"pos_weight": [round(float(w), 4) for w in weights]})

    def loss(self, device: torch.device, label_smoothing: float = 0.0) -> LossFn:
        import torch

        weights = self.state.get("pos_weight")
        pos_weight = torch.tensor(weights, device=device) if weights else None
        criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        return lambda model, x, y: criterion(model(x).float(), y.float())

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def thresholds(self) -> np.ndarray:
        return np.asarray(self.state.get("thresholds") or [DEFAULT_THRESHOLD] * len(self.names))

    def tune(self, logits: torch.Tensor, labels: torch.Tensor) -> Task:
        scores, truth = self.activate(logits).numpy(), labels.numpy() > 0.5
        chosen = [round(best_threshold(scores[:, j], truth[:, j]), 4) for j in range(len(self.names))]
        return type(self)(self.names, self.state | {"thresholds": chosen})

    def validation_row(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        import torch

        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        scores, truth = self.activate(logits).numpy(), labels.numpy() > 0.5
        return {"val_loss": float(loss), "val_map": _mean_ap(scores, truth)}

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        return _mean_ap(self.activate(logits).numpy(), labels.numpy() > 0.5)

    def headroom(self, metrics: dict[str, Any], n_val: int) -> Headroom:
        aps = [
            (v["average_precision"], v["support"])
            for v in metrics["per_label"].values()
            if v["average_precision"] is not None and v["support"]
        ]
        variance = sum(ap * (1.0 - ap) / positives for ap, positives in aps)
        standard_error = float(np.sqrt(variance)) / len(aps) if aps else 0.0
        noise = "two standard errors (each label's AP a proportion over its positives)"
        return Headroom(1.0 - float(metrics["map"]), standard_error, "validation 1 - mAP", noise)

    def size_groups(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels) > 0.5

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        scores, truth = self.activate(logits).numpy(), labels.numpy() > 0.5
        predicted = scores >= self.thresholds()
        per_label = {}
        for j, name in enumerate(self.names):
            tp = int((predicted[:, j] & truth[:, j]).sum())
            n_pred, n_true = int(predicted[:, j].sum()), int(truth[:, j].sum())
            precision, recall = tp / n_pred if n_pred else 0.0, tp / n_true if n_true else 0.0
            per_label[name] = {
                "average_precision": finite(average_precision(scores[:, j], truth[:, j])),
                "precision": precision,
                "recall": recall,
                "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                "support": n_true,
                "threshold": float(self.thresholds()[j]),
            }
        tp, n_pred, n_true = int((predicted & truth).sum()), int(predicted.sum()), int(truth.sum())
        return {
            "map": _mean_ap(scores, truth),
            "micro_f1": 2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0,
            "macro_f1": float(np.mean([v["f1"] for v in per_label.values()])) if per_label else 0.0,
            "subset_accuracy": float((predicted == truth).all(1).mean()) if len(truth) else 0.0,
            "n": int(len(truth)),
            "per_label": per_label,
        }

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        keys = ("map", "micro_f1", "subset_accuracy", "n")
        return {k: metrics[k] for k in keys}

    def answer(self, outputs: np.ndarray, shown: Sequence[str], top: int = 5) -> dict[str, Any]:
        """The top probabilities, and the labels over their thresholds."""
        labels = self.predictions(outputs[None], shown)[0]["labels"]
        return super().answer(outputs, shown, top) | {"labels": labels}

    def predictions(self, outputs: np.ndarray, shown: Sequence[str]) -> list[dict[str, Any]]:
        thresholds = self.thresholds()
        return [
            {
                "labels": [shown[j] for j in np.flatnonzero(p >= thresholds)],
                "probabilities": {c: float(v) for c, v in zip(shown, p, strict=True)},
            }
            for p in outputs
        ]

    def predict_rows(
        self, outputs: np.ndarray, shown: Sequence[str], top: int | None
    ) -> list[dict[str, Any]]:
        """The labels over their thresholds, most probable first, at most `top` of them (None:
        all); every label's probability."""
        rows = self.predictions(outputs, shown)
        for row, p in zip(rows, outputs, strict=True):
            over = [j for j in np.argsort(-p, kind="stable") if p[j] >= self.thresholds()[j]]
            row["labels"] = [shown[j] for j in over[:top]]
        return rows

    def eval_lines(self, metrics: dict[str, Any]) -> list[str]:
        """The per-label table: average precision, and at the label's threshold precision, recall, F1."""
        columns = [("average_precision", "AP"), ("precision", "precision"), ("recall", "recall")]
        columns += [("f1", "F1"), ("support", "support"), ("threshold", "threshold")]
        return metrics_table("label", metrics["per_label"], columns)

    def decide(self, outputs: np.ndarray, shown: Sequence[str]) -> Any:
        return [tuple(shown[j] for j in np.flatnonzero(row >= self.thresholds())) for row in outputs]

    def top_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, dict[str, Any]]]:
        import torch

        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), labels.float(), reduction="none"
        ).sum(1)
        predicted = self.activate(logits).numpy() >= self.thresholds()
        rows = []
        for i in losses.argsort(descending=True).tolist():
            shown = {
                "true": ", ".join(n for n, t in zip(self.names, labels[i].tolist(), strict=True) if t > 0.5),
                "predicted": ", ".join(n for n, p in zip(self.names, predicted[i], strict=True) if p),
                "loss": round(float(losses[i]), 4),
            }
            rows.append((i, shown))
        return rows


def _split(text: str, separator: str) -> list[str]:
    return [part.strip() for part in text.split(separator) if part.strip()]


def _mean_ap(scores: np.ndarray, truth: np.ndarray) -> float:
    """mAP over the labels with a positive example here (0 without any)."""
    aps = [average_precision(scores[:, j], truth[:, j]) for j in range(truth.shape[1])]
    defined = [a for a in aps if np.isfinite(a)]
    return float(np.mean(defined)) if defined else 0.0
