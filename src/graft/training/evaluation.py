"""A model's numbers on an evaluation set: its outputs, the task's metrics, the examples it gets
most wrong, and test-time flip averaging (`--tta`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..heads import GraftModel
from ..modalities.base import Modality
from ..runtime.device import module_device
from ..runtime.inference import forward_all
from ..tasks import Task, get_task
from .job import Job, TrainResult


class FeatureSet:
    """Cached features as an evaluation set (the loop's Evaluate callback and final metrics)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sources: Sequence[Any] = ()) -> None:
        self.x, self.labels, self.sources = x, y, sources

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, device: torch.device, batch_size: int = 4096
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield (
                torch.arange(start, min(len(self), start + batch_size)),
                self.x[start : start + batch_size].to(device, non_blocking=True),
            )


def logits_of(model: nn.Module, eval_set: Any) -> torch.Tensor:
    return forward_all(model, eval_set.batches(module_device(model)), len(eval_set), across_ranks=True)


def metrics_of(model: nn.Module, eval_set: Any, task: Task, logits: torch.Tensor | None = None) -> dict:
    logits = logits_of(model, eval_set) if logits is None else logits
    return task.metrics(logits, eval_set.labels)


def highest_losses(
    logits: torch.Tensor, eval_set: Any, task: Task, modality: Modality, count: int = 12
) -> list[dict[str, Any]]:
    """fastai's top losses: the validation examples the model gets most wrong, for the report."""
    if not len(eval_set):
        return []
    worst = task.top_losses(logits, eval_set.labels)[:count]
    return [{"example": modality.show(eval_set.sources[i]), **shown} for i, shown in worst]


def evaluate_test(job: Job, result: TrainResult) -> None:
    """The model as it is kept on the test split, one full pass, into `result.test` (for a run
    that chose between models before testing any: `runner._best_encoding`)."""
    splits = job.splits
    if splits.test is not None:
        test_set = job.modality.eval_set(job.backbone, job.prep, splits.test, splits.skipped)
        result.test = metrics_of(job.model, test_set, job.task)


def test_time_views(job: Job, model: GraftModel, val_set: Any) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """The kept model's validation outputs, and whether predictions average each image with its
    mirror image (`--tta`: `auto` lets the task weigh the validation evidence)."""
    config = job.config
    val_logits = logits_of(model, val_set)  # one pass for the metrics and the highest losses
    tta = None
    if model.flip_average:
        tta = {"flip": True, "reason": "on: the kept probe was trained on flip-averaged features"}
    elif job.modality.mirrors:
        val_logits, tta = choose_flip_tta(config.tta, model, val_set, val_logits, job.task)
    if tta is not None:
        job.log(f"test-time flip averaging: {tta['reason']}")
    return val_logits, tta


def choose_flip_tta(
    mode: str, model: GraftModel, val_set: Any, plain: torch.Tensor, task: Task | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Test-time flip averaging (fastai's `tta`, timm's `--tta`): each input's features averaged with
    its mirror image's, at twice the prediction cost. Fine-tuning augments with flips, so it
    usually gains (`python -m bench levers --only tta`); `auto` keeps it only when validation
    shows a gain beyond noise (`Task.keeps_flip`: otherwise the cheaper plain model stays),
    because a mirror image means something else in some data. Chosen on the validation set, its
    validation score reads slightly high; --test gives the unbiased figure. Returns the validation
    logits of the choice and report.json's record (with the task's monitored metric with and
    without: `val_<monitor>`)."""
    task = task or get_task("single")
    if mode == "none":
        return plain, {"flip": False, "reason": "off (--tta none)"}
    if mode == "auto" and not len(val_set):
        return plain, {"flip": False, "reason": "off: no validation examples to show a gain"}
    model.flip_average = True
    flipped = logits_of(model, val_set)
    labels = val_set.labels
    scores = {
        "plain": task.score(plain, labels) if len(val_set) else None,
        "flip": task.score(flipped, labels) if len(val_set) else None,
    }
    evidence = f"val_{task.monitor}"
    if mode == "flip":
        return flipped, {"flip": True, "reason": "on (--tta flip)", evidence: scores}
    better, reason = task.keeps_flip(plain, flipped, labels, scores)
    model.flip_average = better
    return (flipped if better else plain), {"flip": better, "reason": reason, evidence: scores}
