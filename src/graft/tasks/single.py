"""Single-label classification: one class per example; softmax cross-entropy (optional balanced
class weights and label smoothing); monitored by accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..data.splits import stratified_subset
from ..errors import ConfigError, DataError
from .base import Headroom, LossFn, RawLabel, Task, metrics_table

if TYPE_CHECKING:
    import torch


class SingleLabel(Task):
    name: ClassVar[str] = "single"
    output_meaning: ClassVar[str] = "float32 (batch, classes): softmax, in graft.classes order"
    monitor: ClassVar[str] = "accuracy"
    monitor_short: ClassVar[str] = "val_acc"
    monitor_name: ClassVar[str] = "accuracy"
    monitor_label: ClassVar[str] = "accuracy"
    describe: ClassVar[str] = "single-label classification"
    size_unit: ClassVar[str] = "per class"
    size_axis: ClassVar[str] = "labelled examples per class"
    size_column: ClassVar[str] = "labels/class"

    @classmethod
    def from_raw(cls, raw: Sequence[RawLabel], columns: Sequence[str], separator: str) -> Task:
        if raw and isinstance(raw[0], tuple):
            raise ConfigError("single-label classification reads one --label-column")
        return cls(tuple(sorted({str(r) for r in raw})))

    @cached_property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.names)}

    def encode(self, raw: RawLabel) -> int:
        if raw not in self._index:
            raise ValueError(f"label {raw!r} is not among the training labels")
        return self._index[raw]

    def stack(self, values: list[Any]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    def check(self, labels: np.ndarray, unit: str) -> None:
        missing = sorted(set(range(len(self.names))) - {int(v) for v in np.asarray(labels).tolist()})
        if missing:
            names = ", ".join(self.names[i] for i in missing)
            raise DataError(
                f"no readable training {unit} for class(es) {names}: add some or remove the class"
            )

    def fit(self, labels: np.ndarray, options: dict[str, Any]) -> Task:
        if options.get("class_weights") != "auto":
            return self
        # scikit-learn's 'balanced' weights, n / (classes * count): each class weighs the same
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(self.names)).astype(float)
        weights = counts.sum() / (len(self.names) * np.maximum(counts, 1))
        return type(self)(self.names, {"class_weights": [float(w) for w in weights]})

    def label_tensor(self, labels: np.ndarray) -> torch.Tensor:
        import torch

        return torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def loss(self, device: torch.device, label_smoothing: float = 0.0) -> LossFn:
        import torch

        weights = self.state.get("class_weights")
        weight = torch.tensor(weights, device=device) if weights else None
        criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        return lambda model, x, y: criterion(model(x), y)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def validation_row(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        from ..metrics import validation_row  # scikit-learn: training and evaluation only

        return validation_row(logits, labels, self.names)

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        from ..metrics import classification_metrics

        return classification_metrics(labels.numpy(), logits.argmax(1).numpy(), self.names)

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        right = logits.argmax(1).numpy() == np.asarray(labels)
        return float(right.mean()) if len(right) else float("nan")

    def keeps_flip(
        self, plain: torch.Tensor, flipped: torch.Tensor, labels: torch.Tensor, scores: dict[str, Any]
    ) -> tuple[bool, str]:
        # the examples the two get differently right decide (McNemar): flip averaging must fix more
        # than it breaks by over one standard error of that difference, sqrt(fixed + broken)
        truth = labels.numpy()
        plain_right, flip_right = plain.argmax(1).numpy() == truth, flipped.argmax(1).numpy() == truth
        fixed, broken = int((flip_right & ~plain_right).sum()), int((plain_right & ~flip_right).sum())
        better = fixed - broken > math.sqrt(fixed + broken)
        verdict = "on: it" if better else "off: it did not"
        return better, (
            f"{verdict} fix more validation examples than it broke by over one standard error ({fixed} "
            f"fixed, {broken} broken; accuracy {scores['flip']:.4f} with, {scores['plain']:.4f} without)"
        )

    def headroom(self, metrics: dict[str, Any], n_val: int) -> Headroom:
        # an accuracy's noise is binomial: sqrt(p(1-p)/n)
        accuracy = float(metrics["accuracy"])
        error = 1.0 - accuracy
        standard_error = math.sqrt(max(accuracy * error, 0.0) / max(1, n_val))
        return Headroom(error, standard_error, "validation error", "two standard errors")

    def size_groups(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels).reshape(-1)
        return labels[:, None] == np.unique(labels)[None, :]

    def training_subset(self, labels: np.ndarray, per_group: int, seed: int) -> np.ndarray:
        # the same count of every class (the smallest class's, when it has fewer)
        smallest = int(np.bincount(np.asarray(labels, dtype=np.int64)).min())
        return stratified_subset(labels, min(per_group, smallest), seed)

    def validation_subset(self, labels: np.ndarray, per_group: int, seed: int) -> np.ndarray:
        labels = np.asarray(labels)
        rng = np.random.default_rng(seed)
        keep = [rng.permutation(np.flatnonzero(labels == c))[:per_group] for c in np.unique(labels)]
        return np.sort(np.concatenate(keep)) if keep else np.arange(len(labels))

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]}

    def predictions(self, outputs: np.ndarray, shown: Sequence[str]) -> list[dict[str, Any]]:
        rows = []
        for proba in outputs:
            best = int(np.argmax(proba))
            rows.append(
                {
                    "label": shown[best],
                    "probability": float(proba[best]),
                    "probabilities": {c: float(p) for c, p in zip(shown, proba, strict=True)},
                }
            )
        return rows

    def predict_rows(
        self, outputs: np.ndarray, shown: Sequence[str], top: int | None
    ) -> list[dict[str, Any]]:
        """The `top` most probable classes (1 by default), most probable first."""
        k = max(1, min(top or 1, len(shown)))
        rows = []
        for p in outputs:
            best = p.argsort()[::-1][:k]
            top_k = [{"label": shown[j], "probability": round(float(p[j]), 6)} for j in best]
            rows.append({"predictions": top_k})
        return rows

    def eval_lines(self, metrics: dict[str, Any]) -> list[str]:
        """The per-class table, then the most-confused pairs."""
        columns = [("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("support", "support")]
        lines = metrics_table("class", metrics["per_class"], columns)
        for pair in metrics.get("most_confused", []):
            lines.append(f"  {pair['true']} taken for {pair['predicted']}: {pair['count']}")
        return lines

    def decide(self, outputs: np.ndarray, shown: Sequence[str]) -> Any:
        return [shown[i] for i in outputs.argmax(1)]

    def top_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, dict[str, Any]]]:
        import torch

        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        proba = logits.softmax(1)
        rows = []
        for i in losses.argsort(descending=True).tolist():
            predicted = int(proba[i].argmax())
            shown = {
                "true": self.names[int(labels[i])],
                "predicted": self.names[predicted],
                "probability": round(float(proba[i, predicted]), 4),
                "loss": round(float(losses[i]), 4),
            }
            rows.append((i, shown))
        return rows
