"""Regression: one or several numeric targets per example. The head predicts standardised targets
(training mean and standard deviation, saved with the bundle) under a mean squared error, so one
learning rate fits targets in any unit; predictions come back in the data's units. Monitored by
R2 (averaged over targets); RMSE, MAE and Spearman's rank correlation are reported beside it.

Its rules elsewhere: `graft compare` sizes count examples per decile of each target (ten
quantile bins of the training pool's values): a size of N draws about 10 x N examples spread
over each target's range, as stratifying by class spreads them over the classes; `--tta auto`
keeps flip averaging when validation R2 rises by over one paired-bootstrap standard error
(`Task.keeps_flip`); `auto` keeps a probe whose validation unexplained variance, 1 - R2, is
within the larger of 1% and two standard errors, (1 - R2) x sqrt(2 / n): 1 - R2 is a mean of
squared errors over a fixed variance, whose relative standard error is sqrt(2 / n) for normal
errors (a chi-square with n degrees of freedom).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import DataError
from .base import Headroom, LossFn, RawLabel, Task, finite, metrics_table

if TYPE_CHECKING:
    import torch

SIZE_BINS = 10  # graft compare: a target's deciles are its "classes"
LEAST_SQUARES_PER_FEATURE = 10  # examples a feature for a linear head to start at the least-squares fit


def r2(predicted: np.ndarray, true: np.ndarray) -> float:
    """scikit-learn's r2_score of one target (NaN for a constant target)."""
    total = float(((true - true.mean()) ** 2).sum())
    return 1.0 - float(((true - predicted) ** 2).sum()) / total if total > 0 else float("nan")


def spearman(predicted: np.ndarray, true: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(true) < 2 or np.ptp(true) == 0 or np.ptp(predicted) == 0:
        return float("nan")
    return float(spearmanr(predicted, true).statistic)


class Regression(Task):
    name: ClassVar[str] = "regression"
    output_meaning: ClassVar[str] = (
        "float32 (batch, targets): the predicted values in the data's units, in graft.classes order"
    )
    monitor: ClassVar[str] = "r2"
    monitor_short: ClassVar[str] = "val_R2"
    monitor_name: ClassVar[str] = "R2"
    monitor_label: ClassVar[str] = "R2 (higher is better)"
    describe: ClassVar[str] = "regression"
    size_unit: ClassVar[str] = "per decile"
    size_axis: ClassVar[str] = "labelled examples per decile of the target"
    size_column: ClassVar[str] = "examples/decile"
    outputs_are: ClassVar[str] = "values"

    @classmethod
    def from_raw(cls, raw: Sequence[RawLabel], columns: Sequence[str], separator: str) -> Task:
        return cls(tuple(columns))

    def encode(self, raw: RawLabel) -> list[float]:
        cells = raw if isinstance(raw, tuple) else (raw,)
        values = []
        for cell in cells:
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"target {cell!r} is not a number") from None
            if not np.isfinite(value):
                raise ValueError(f"target {cell!r} is not a finite number")
            values.append(value)
        return values

    def check(self, labels: np.ndarray, unit: str) -> None:
        labels = np.asarray(labels, dtype=np.float64)
        if not np.isfinite(labels).all():
            raise DataError(f"a training target is not a finite number: fix or remove those {unit}")
        flat = [self.names[j] for j in range(labels.shape[1]) if np.ptp(labels[:, j]) == 0]
        if flat:
            shown = ", ".join(flat)
            raise DataError(f"the target(s) {shown} take one value in all training {unit}: nothing to learn")

    def fit(self, labels: np.ndarray, options: dict[str, Any]) -> Task:
        labels = np.asarray(labels, dtype=np.float64)
        mean, std = labels.mean(0), labels.std(0)
        std = np.where(std > 0, std, 1.0)
        return type(self)(self.names, {"mean": mean.tolist(), "std": std.tolist()})

    def _scale(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        mean = torch.tensor(self.state.get("mean") or [0.0] * len(self.names), device=device)
        std = torch.tensor(self.state.get("std") or [1.0] * len(self.names), device=device)
        return mean, std

    def loss(self, device: torch.device, label_smoothing: float = 0.0) -> LossFn:
        import torch

        mean, std = self._scale(device)
        return lambda model, x, y: torch.nn.functional.mse_loss(model(x).float(), (y.float() - mean) / std)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale(logits.device)
        return logits.float() * std + mean

    def validation_row(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        import torch

        mean, std = self._scale(logits.device)
        loss = torch.nn.functional.mse_loss(logits.float(), (labels.float() - mean) / std)
        return {"val_loss": float(loss), "val_r2": self.score(logits, labels)}

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        predicted, true = self.activate(logits).numpy(), labels.numpy()
        scores = [r2(predicted[:, j], true[:, j]) for j in range(true.shape[1])]
        defined = [s for s in scores if np.isfinite(s)]
        return float(np.mean(defined)) if defined else 0.0

    def headroom(self, metrics: dict[str, Any], n_val: int) -> Headroom:
        unexplained = 1.0 - float(metrics["r2"])
        standard_error = abs(unexplained) * float(np.sqrt(2.0 / max(1, n_val)))
        noise = "two standard errors ((1 - R2) x sqrt(2/n))"
        return Headroom(unexplained, standard_error, "validation unexplained variance (1 - R2)", noise)

    def linear_start(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The least-squares fit of the standardised targets, where it is well determined (at least
        LEAST_SQUARES_PER_FEATURE examples a feature): from a small initial slope, Adam's steps of
        about the LR each would take hundreds of steps to reach it, and a one-feature head (a
        bi-encoder's cosine) would end the probe far from its calibration."""
        import torch

        n, d = features.shape
        if n < LEAST_SQUARES_PER_FEATURE * d:
            return None
        mean, std = self._scale(features.device)
        targets = (labels.float() - mean) / std
        design = torch.cat([features.float(), torch.ones(n, 1, device=features.device)], dim=1)
        solution = torch.linalg.lstsq(design.cpu(), targets.cpu()).solution.to(features.device)
        return solution[:d].T.contiguous(), solution[d].contiguous()

    def ranking(self, metrics: dict[str, Any], n_val: int) -> tuple[str, float, float]:
        """Spearman's rank correlation: what a similarity score is judged by, and what no monotone
        calibration of a model's outputs changes (R2 would favour the better-calibrated of two
        equally good rankings). Its standard error, (1 - rho^2) sqrt(1.06 / (n - 3)), is Fieller,
        Hartley and Pearson's (1957) for Fisher's z of a rank correlation, taken back to rho."""
        rho = metrics.get("spearman")
        rho = float(rho) if rho is not None else 0.0
        return "spearman", rho, (1.0 - rho**2) * float(np.sqrt(1.06 / max(1, n_val - 3)))

    def size_groups(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
        columns = []
        for values in labels.T:  # each target's deciles, by the quantiles of these values
            edges = np.quantile(values, np.linspace(0, 1, SIZE_BINS + 1)[1:-1]) if len(values) else []
            bins = np.searchsorted(edges, values, side="right")
            columns += [bins == b for b in range(SIZE_BINS)]
        return np.stack(columns, 1) if columns else np.zeros((len(labels), 0), bool)

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        predicted, true = self.activate(logits).numpy().astype(np.float64), labels.numpy().astype(np.float64)
        per_target = {}
        for j, name in enumerate(self.names):
            error = predicted[:, j] - true[:, j]
            per_target[name] = {
                "r2": finite(r2(predicted[:, j], true[:, j])),
                "rmse": float(np.sqrt((error**2).mean())) if len(error) else 0.0,
                "mae": float(np.abs(error).mean()) if len(error) else 0.0,
                "spearman": finite(spearman(predicted[:, j], true[:, j])),
            }

        def average(key: str) -> float | None:
            values = [v[key] for v in per_target.values() if v[key] is not None]
            return float(np.mean(values)) if values else None

        return {
            "r2": average("r2") or 0.0,
            "rmse": average("rmse"),
            "mae": average("mae"),
            "spearman": average("spearman"),
            "n": int(len(true)),
            "per_target": per_target,
            # for the report's plot: predicted against true (first target), at most 2,000 points
            "points": {"true": true[:2000, 0].tolist(), "predicted": predicted[:2000, 0].tolist()},
        }

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: metrics[k] for k in ("r2", "rmse", "mae", "spearman", "n")}

    def answer(self, outputs: np.ndarray, shown: Sequence[str], top: int = 5) -> dict[str, Any]:
        """The predicted numbers, by target, in the data's units."""
        return {"values": {name: round(float(v), 6) for name, v in zip(shown, outputs, strict=True)}}

    def output_scale(self) -> np.ndarray | float:
        return np.asarray(self.state.get("std") or 1.0, dtype=np.float32)

    def predictions(self, outputs: np.ndarray, shown: Sequence[str]) -> list[dict[str, Any]]:
        if len(shown) == 1:
            return [{"value": float(row[0])} for row in outputs]
        return [{"values": {c: float(v) for c, v in zip(shown, row, strict=True)}} for row in outputs]

    def eval_lines(self, metrics: dict[str, Any]) -> list[str]:
        """Several targets: the per-target table (one target's numbers are the headline)."""
        if len(metrics["per_target"]) < 2:
            return []
        columns = [("r2", "R2"), ("rmse", "RMSE"), ("mae", "MAE"), ("spearman", "Spearman")]
        return metrics_table("target", metrics["per_target"], columns)

    def decide(self, outputs: np.ndarray, shown: Sequence[str]) -> Any:
        return outputs[:, 0] if outputs.shape[1] == 1 else outputs

    def top_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, dict[str, Any]]]:
        predicted = self.activate(logits)
        _, std = self._scale(logits.device)
        errors = ((predicted - labels.float()) / std).abs().sum(1)
        rows = []
        for i in errors.argsort(descending=True).tolist():
            shown = {
                "true": ", ".join(f"{v:.4g}" for v in labels[i].tolist()),
                "predicted": ", ".join(f"{v:.4g}" for v in predicted[i].tolist()),
                "loss": round(float(errors[i]), 4),
            }
            rows.append((i, shown))
        return rows

    def examples_per_group(self, n_train: int) -> float:
        return float(n_train)
