"""What a run learns to predict, behind one interface: the label encoding and its checks, the
head's width, the loss, the output activation, the metrics and the one monitored (keep-best,
early stopping, `auto`), decision thresholds, what `predict` returns.

A task is fitted to the training labels (`fit`: class weights, target statistics), may be tuned
on validation outputs (`tune`: thresholds), and saved with the bundle (`to_dict`), so a predictor
applies exactly what training decided. Every monitored metric is higher-is-better (accuracy, mAP,
R2), so keep-best and early stopping compare one way for every task.

Adding a task is one file that subclasses `Task`, registered in `registry.py` (or by a plugin through
`register_task`), plus its tests.

Task modules import torch only inside the methods that train or score: `graft predict` of an
exported run (graft.predict.light) builds the task from the bundle and calls `predictions` and
`decide` (numpy) without loading PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

RawLabel = str | tuple[str, ...]  # one label column's text, or one text per label column
LossFn = Callable[["torch.nn.Module", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
# `--tta auto` beyond single-label: the paired bootstrap's resamples of the validation examples
FLIP_RESAMPLES = 200


@dataclass(frozen=True)
class Headroom:
    """How far a probe's validation score is from perfect (`gap`: 1 - accuracy, 1 - mAP, 1 - R2)
    and the standard error of that score: `auto` keeps the probe unless the gap exceeds the larger
    of 1% and two standard errors (`training.strategies.has_headroom`)."""

    gap: float
    standard_error: float
    what: str  # the gap, for the reason: "validation error"
    noise: str  # how the standard error was estimated, for the reason


@dataclass(frozen=True)
class Task:
    """One task, fitted or not: `names` are the classes, labels or targets; `state` what `fit`
    and `tune` decided (JSON-able, saved in the bundle)."""

    names: tuple[str, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)

    name: ClassVar[str] = ""
    monitor: ClassVar[str] = ""  # the validation metric keep-best, early stopping and `auto` use
    monitor_short: ClassVar[str] = ""  # how the one-line summaries name it
    monitor_name: ClassVar[str] = ""  # its name for people: accuracy, mAP, R2
    monitor_label: ClassVar[str] = ""  # how plots and pages name it, with its direction if not obvious
    describe: ClassVar[str] = ""
    # `graft compare`'s data sizes: N examples of each of the task's groups (`size_groups`)
    size_unit: ClassVar[str] = ""  # its log lines: "10 per class"
    size_axis: ClassVar[str] = ""  # its learning curve's x axis
    size_column: ClassVar[str] = ""  # its tables' column
    # what the activated outputs are: the ONNX graph's output name, and whether `predict_proba`
    # means anything ("probabilities") or only `predict` does ("values", regression's numbers)
    outputs_are: ClassVar[str] = "probabilities"
    output_meaning: ClassVar[str] = ""  # an export's metadata: what the graph's output holds

    # ---- labels
    @classmethod
    def from_raw(cls, raw: Sequence[RawLabel], columns: Sequence[str], separator: str) -> Task:
        """The task for these training labels as read (its names: classes, labels or targets)."""
        raise NotImplementedError

    def encode(self, raw: RawLabel) -> Any:
        """One example's label as the model learns it; ValueError(why) for a label it cannot take."""
        raise NotImplementedError

    def encode_all(self, raw: Sequence[RawLabel]) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """(labels of the encodable rows, [(row, why) for the others])."""
        kept, refused, values = [], [], []
        for i, label in enumerate(raw):
            try:
                values.append(self.encode(label))
                kept.append(i)
            except ValueError as err:
                refused.append((i, str(err)))
        return self.stack(values), refused

    def stack(self, values: list[Any]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(len(values), len(self.names))

    def check(self, labels: np.ndarray, unit: str) -> None:
        """Training labels a model can learn from (a DataError naming what is missing)."""

    def fit(self, labels: np.ndarray, options: dict[str, Any]) -> Task:
        """This task with what the training labels decide (class weights, target statistics)."""
        return self

    def label_tensor(self, labels: np.ndarray) -> torch.Tensor:
        import torch

        return torch.as_tensor(np.asarray(labels, dtype=np.float32))

    # ---- the model
    def outputs(self) -> int:
        return len(self.names)

    def loss(self, device: torch.device, label_smoothing: float = 0.0) -> LossFn:
        raise NotImplementedError

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Head outputs -> what predictions report (probabilities, values in the data's units)."""
        raise NotImplementedError

    def tune(self, logits: torch.Tensor, labels: torch.Tensor) -> Task:
        """This task with what the validation outputs decide (multi-label thresholds)."""
        return self

    # ---- numbers
    def validation_row(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """The per-epoch validation numbers: val_loss and val_<monitor> at least (cheap: they run
        after every epoch of a probe)."""
        raise NotImplementedError

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """The report's metrics of one split: `n` and `monitor` among them."""
        raise NotImplementedError

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """The monitored metric of these head outputs (validation_row's val_<monitor>)."""
        return float(self.validation_row(logits, labels)[f"val_{self.monitor}"])

    def keeps_flip(
        self, plain: torch.Tensor, flipped: torch.Tensor, labels: torch.Tensor, scores: dict[str, Any]
    ) -> tuple[bool, str]:
        """`--tta auto`: (keep flip averaging, the reason). It is kept when the monitored validation
        metric rises by more than one standard error of the paired difference, estimated by a
        paired bootstrap: FLIP_RESAMPLES resamples (seeded) of the validation examples, each
        scored with and without flips. `scores`: {"plain": ..., "flip": ...} on all of them."""
        import torch

        rng = np.random.default_rng(0)
        gains = []
        for _ in range(FLIP_RESAMPLES):
            rows = torch.as_tensor(rng.integers(0, len(labels), len(labels)))
            gains.append(self.score(flipped[rows], labels[rows]) - self.score(plain[rows], labels[rows]))
        error = float(np.nanstd(gains)) if gains else 0.0
        better = scores["flip"] - scores["plain"] > error
        verdict = "on: it raised" if better else "off: it did not raise"
        return better, (
            f"{verdict} validation {self.monitor_name} by over one standard error ({scores['flip']:.4f} "
            f"with, {scores['plain']:.4f} without; standard error {error:.4f}, paired bootstrap over "
            f"the {len(labels)} validation examples)"
        )

    def headroom(self, metrics: dict[str, Any], n_val: int) -> Headroom | None:
        """`auto`'s headroom rule for a probe with these validation metrics (None: no rule, the
        data size and the time decide alone)."""
        return None

    def linear_start(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A linear head's starting (weight, bias) on these standardised features, where the task
        has a closed-form fit (None: the head starts from its initial weights)."""
        return None

    def ranking(self, metrics: dict[str, Any], n_val: int) -> tuple[str, float, float]:
        """What two models of this task are compared by when the runner chooses between them
        (`runner._best_encoding`): the metric's name, its validation value, and one standard error
        of it (0 where the task has no rule)."""
        headroom = self.headroom(metrics, n_val)
        noise = headroom.standard_error if headroom is not None else 0.0
        return self.monitor, float(metrics[self.monitor]), float(noise)

    def headline(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The few numbers a bundle and one-line summaries carry."""
        return {self.monitor: metrics[self.monitor], "n": metrics["n"]}

    def predictions(self, outputs: np.ndarray, shown: Sequence[str]) -> list[dict[str, Any]]:
        """`predict`'s rows from activated outputs, names as shown to people."""
        raise NotImplementedError

    def predict_rows(
        self, outputs: np.ndarray, shown: Sequence[str], top: int | None
    ) -> list[dict[str, Any]]:
        """`graft predict`'s rows (its --json, and its lines for people): `predictions`, with at
        most `top` classes or labels where the task lists some (None: as many as it decides)."""
        return self.predictions(outputs, shown)

    def eval_lines(self, metrics: dict[str, Any]) -> list[str]:
        """What `graft eval` prints below the headline numbers: a table per class, label or target."""
        return []

    def answer(self, outputs: np.ndarray, shown: Sequence[str], top: int = 5) -> dict[str, Any]:
        """`graft serve`'s answer for one input's activated outputs: the most probable `top`
        classes or labels (tasks add what applies: the labels over their thresholds, the numbers)."""
        order = outputs.argsort()[::-1][: min(top, len(shown))]
        return {"top": [{"label": shown[i], "probability": round(float(outputs[i]), 6)} for i in order]}

    def has_probabilities(self) -> None:
        """`predict_proba` asks for probabilities: a one-line error where the outputs are not."""
        if self.outputs_are != "probabilities":
            raise ConfigError(
                f"a {self.describe} model predicts {self.outputs_are}, not probabilities: use predict"
            )

    def output_scale(self) -> np.ndarray | float:
        """The unit an export's parity is measured in: 1 for probabilities (regression: each
        target's training standard deviation, so one tolerance fits targets of any scale)."""
        return 1.0

    def decide(self, outputs: np.ndarray, shown: Sequence[str]) -> Any:
        """`predict`'s answer from activated outputs: a class name per input (single-label), a tuple
        of label names (multi-label), the numbers (regression: 1-D for one target)."""
        raise NotImplementedError

    def top_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, dict[str, Any]]]:
        """(position, what the report shows) of the validation examples the model gets most wrong."""
        return []

    def examples_per_group(self, n_train: int) -> float:
        """What `auto`'s minimum-data rule counts: examples per class (or label); all for regression."""
        return n_train / max(1, len(self.names))

    # ---- graft compare's data sizes
    def size_groups(self, labels: np.ndarray) -> np.ndarray:
        """(examples, groups) membership that `graft compare`'s sizes count examples of."""
        raise NotImplementedError

    def training_subset(self, labels: np.ndarray, per_group: int, seed: int) -> np.ndarray:
        """Sorted positions of a seeded subset with at least `per_group` examples of every group
        (all of a smaller one), drawn greedily, the rarest group first (`cover_groups`)."""
        return cover_groups(self.size_groups(labels), per_group, seed)

    def validation_subset(self, labels: np.ndarray, per_group: int, seed: int) -> np.ndarray:
        """`graft compare`'s validation set: about `per_group` examples of each group at most."""
        return cover_groups(self.size_groups(labels), per_group, seed)

    def size_reached(self, labels: np.ndarray) -> int:
        """The size (examples of the smallest group) of all of these examples: the "all" point."""
        counts = self.size_groups(labels).sum(0)
        return int(counts[counts > 0].min()) if (counts > 0).any() else 0

    # ---- saving
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **({"state": self.state} if self.state else {})}


def metrics_table(
    first: str,
    rows: dict[str, dict[str, Any]],
    columns: Sequence[tuple[str, str]],
) -> list[str]:
    """A table for people: a row per name, a column per (key, header); numbers to 3 decimals,
    counts as they are, None as `-`, each right-aligned under its header."""
    width = max([len(first), *(len(name) for name in rows)])
    widths = [max(len(header), 5) for _, header in columns]
    lines = [f"{first:{width}}  " + "  ".join(f"{h:>{w}}" for (_, h), w in zip(columns, widths, strict=True))]
    for name, values in rows.items():
        cells = [_cell(values.get(key)) for key, _ in columns]
        lines.append(f"{name:{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def cover_groups(groups: np.ndarray, per_group: int, seed: int) -> np.ndarray:
    """Sorted positions of examples such that each group (a column of `groups`) has at least
    `per_group` members among them, or all it has. Groups overlap (an example carries several
    labels), so groups are filled rarest first, each from a seeded random order of the examples:
    a rare label's examples then also count towards the common labels they carry."""
    groups = np.asarray(groups, dtype=bool)
    order = np.random.default_rng(seed).permutation(len(groups))
    chosen = np.zeros(len(groups), dtype=bool)
    for j in np.argsort(groups.sum(0), kind="stable"):
        missing = per_group - int(groups[chosen, j].sum())
        if missing > 0:
            candidates = order[groups[order, j] & ~chosen[order]]
            chosen[candidates[:missing]] = True
    return np.flatnonzero(chosen)


def finite(value: float) -> float | None:
    """JSON has no NaN: an undefined metric (one class in a split) is None."""
    return float(value) if math.isfinite(value) else None
