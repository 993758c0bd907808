"""A training run's inputs (`Job`, read-only: a step that changes one makes a new job with
`dataclasses.replace`), what a recipe ends with (`Outcome`, which the runner applies once) and the
typed result of the run (`TrainResult`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import Backbone
from ..config import Plan, TrainConfig
from ..data.splits import DataSplits
from ..heads import GraftModel
from ..modalities.base import Modality
from ..tasks import Task, get_task
from .budget import Clock
from .trackers import Tracking

Log = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """One training run's inputs, as the runner resolved them."""

    config: TrainConfig
    plan: Plan
    modality: Modality
    backbone: Backbone
    prep: Any
    model: GraftModel
    splits: DataSplits
    device: torch.device
    run_dir: Path
    clock: Clock  # --time-budget's: the one the runner built
    log: Log
    task: Task = field(default_factory=lambda: get_task("single"))  # fitted to the training labels
    budget_subset: dict[str, Any] | None = None  # the training subset --time-budget allowed, if any
    growing: Any = None  # --time-budget's subset extracted in chunks (`subset.Growing`): the probe's
    tracking: Tracking = field(default_factory=Tracking)  # --log-to; off by default
    known_features: Any = None  # `features.KnownRows` of `--backbone auto`'s pick: not extracted twice
    backbone_pick: dict[str, Any] | None = None  # `--backbone auto`'s table and choice (the report's)

    @property
    def started(self) -> float:
        return self.clock.started

    def outcome(self, result: TrainResult) -> Outcome:
        """`result` with the job as it stands: a recipe that changed nothing else."""
        return Outcome(result, self.model, self.task, self.plan, self.prep)

    def after(self, outcome: Outcome) -> Job:
        """The job as `outcome` leaves it: its model, task, plan, preprocessing (and data)."""
        return replace(
            self,
            model=outcome.model,
            task=outcome.task,
            plan=outcome.plan,
            prep=outcome.prep,
            splits=outcome.splits or self.splits,
        )


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    val: dict[str, Any]  # final validation metrics
    test: dict[str, Any] | None
    n_train: int
    train_seconds: float
    extract_seconds: float = 0.0
    cache_hit: bool = False
    features_engine: dict[str, Any] | None = None  # graft.runtime.engine.EngineChoice of the extraction
    phases: list[str] = field(default_factory=list)  # one summary line per phase
    kept: dict[str, Any] | None = None  # which epoch's weights the model holds, and why
    top_losses: list[dict[str, Any]] = field(default_factory=list)  # validation examples most wrong
    scratch_files: list[Path] = field(default_factory=list)  # to remove once the bundle is written
    tta: dict[str, Any] | None = None  # test-time flip averaging: chosen or not, and the evidence
    advice: list[str] = field(default_factory=list)  # what would likely do better (a longer budget)
    initial_head: dict[str, torch.Tensor] | None = None  # a probe's: the head's weights before it trained
    # a probe that kept more feature layers: the probe on the fewest, which fine-tuning starts from,
    # and the kept one, which a fine-tuned model must beat on validation to be kept (`finetune`)
    fewest_layers: Outcome | None = None
    more_layers: Outcome | None = None


@dataclass(frozen=True)
class Outcome:
    """What a recipe (or one of its phases) ends with: its result, and what the job becomes, which
    the runner applies once (`Job.after`)."""

    result: TrainResult
    model: GraftModel  # the trained network: the body and the kept head
    task: Task  # tuned on validation (multi-label thresholds)
    plan: Plan  # with the recipe's notes and the preprocessing kept
    prep: Any  # the body's preprocessing as kept (its feature layers)
    layers: int | None = None  # the feature layers of a probe that chose between them
    splits: DataSplits | None = None  # the data, where the recipe read on (`auto` under a budget)

    @property
    def head(self) -> nn.Module:
        return self.model.head


def model_with(model: GraftModel, head: nn.Module, flip_average: bool | None = None) -> GraftModel:
    """The network of `model`'s body (shared, not copied) and `head`: a recipe's own model, the
    job's left as it was."""
    flips = model.flip_average if flip_average is None else flip_average
    return GraftModel(model.body, head, flip_average=flips, mirror=model.mirror)


def probes_first(config: TrainConfig, plan: Plan) -> bool:
    """Head-only epochs can be a probe on cached features when they would see exactly those
    features: the body frozen, BatchNorm statistics included (--bn trainable adapts them)."""
    return plan.strategy == "finetune" and plan.freeze_epochs > 0 and config.bn == "frozen"


def monitored(task: Task) -> str:
    """The history key keep-best, early stopping and the progress bar follow."""
    return f"val_{task.monitor}"


def task_loss(job: Job) -> Any:
    return job.task.loss(job.device, job.config.label_smoothing)
