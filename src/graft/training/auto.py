"""`--strategy auto`: the linear probe or fine-tuning, by the rule of `strategies.choose_strategy`
on the data, the probe's validation score and the time fine-tuning would take."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..distributed import ranks
from . import sizing, strategies, subset
from .job import Job, Outcome, task_loss
from .loop import LoopConfig
from .probe import probe_head
from .timing import finetune_epochs, time_steps


@dataclass
class Choice:
    strategy: str
    reason: str
    epochs: int | None  # finetune without --time-budget or --epochs: what the default budget allows
    probe: Outcome | None  # the probe, when it ran first: the runner applies it to the job


def estimate_epoch_seconds(job: Job, batch_size: int) -> float:
    """Seconds per fine-tuning epoch, from a few timed steps on typical training examples."""
    train = job.splits.train
    sample = train.subset(np.arange(min(len(train), 2 * batch_size)))
    train_set = job.modality.training_set(job.config, job.backbone, job.prep, sample, [])
    model = job.model
    groups = [*job.backbone.trainable_groups(), (strategies.HEAD, list(model.head.parameters()))]
    loop = LoopConfig(epochs=1, lr=0.0, seed=job.config.seed, bn_frozen=job.config.bn == "frozen")
    local = ranks.local_batch_size(batch_size)  # what one process takes of a global batch
    per_step = time_steps(model, groups, train_set.timing_batches(local, job.device, 4), loop, task_loss(job))
    return per_step * math.ceil(len(train) / batch_size)


def _epoch_seconds(job: Job, probe: Outcome, batch_size: int, epochs: int) -> float:
    """Seconds per fine-tuning epoch for `auto`'s rule. Under --time-budget, when what is left
    cannot hold `epochs` forward passes over the training inputs (what their extraction just
    took: an epoch costs more), that lower bound already rules fine-tuning out, and timing steps
    (minutes on a busy CPU) is not paid for."""
    share = len(job.splits.train) / max(1, len(job.splits.train) + len(job.splits.val))
    floor = probe.result.extract_seconds * share  # 0 when the features came from the cache
    remaining = job.clock.left()
    if remaining is not None and floor > 0 and epochs * floor > remaining:
        return floor
    return estimate_epoch_seconds(job, batch_size)


def decide_epoch_seconds(job: Job, probe: Outcome, batch_size: int, epochs: int) -> float:
    """Seconds per fine-tuning epoch (`_epoch_seconds`): rank 0's, for every process."""
    return ranks.from_main(_epoch_seconds(job, probe, batch_size, epochs))


def choose(job: Job) -> Choice:
    """When the modality's fine-tuning starts with a probe (LP-FT), the probe runs first (seconds
    to minutes: it is needed either way) and its validation score joins the rule
    (`strategies.choose_strategy`); fine-tuning then continues from it."""
    if job.budget_subset and "auto" in job.budget_subset:  # the budget went to reading: the probe
        decided = job.budget_subset["auto"]
        return Choice(decided["chosen"], decided["reason"], None, None)
    splits = job.splits
    per_class = job.task.examples_per_group(len(splits.train))
    batch_size = _finetune_batch(job)
    default_epochs = finetune_epochs(job.config, job.modality, "finetune", len(splits.train), batch_size)
    epochs = strategies.auto_epochs(len(splits.train), default_epochs)
    epoch_seconds, probe = 0.0, None
    if per_class >= strategies.MIN_PER_CLASS_TO_FINETUNE:  # only then are the probe and timing worth it
        # the probe runs first for every modality: LP-FT continues from it (images), and where
        # fine-tuning starts afresh (text) it is the model to beat; either way `auto` can stop at it
        probe = probe_head(job)
        job = job.after(probe)
        epoch_seconds = decide_epoch_seconds(job, probe, batch_size, epochs)
    remaining = job.clock.decide_left()  # counts the probe and all before it
    chosen, reason = strategies.choose_strategy(
        per_class,
        epoch_seconds,
        None if remaining is None else max(remaining, 1e-9),
        epochs,
        # how far the probe is from perfect, and the noise of its score: the task's rule
        headroom=job.task.headroom(probe.result.val, len(splits.val)) if probe is not None else None,
        n_val=len(splits.val),
        probe_seconds=_seconds(probe),
        budget_label="budget" if remaining is None else "left of the time budget",
    )
    grown = subset.grow_for_the_probe(job) if chosen == "linear" and probe is not None else None
    if grown is not None:  # the probe again, on what was read in the time fine-tuning would have had
        probe = replace(probe_head(grown), splits=grown.splits)
    planned = None
    if chosen == "finetune" and job.clock.seconds is None and job.config.epochs is None:
        affordable = int(strategies.DEFAULT_AUTO_BUDGET_S // max(epoch_seconds, 1e-9))
        planned = max(epochs, min(default_epochs, affordable))
    return Choice(chosen, reason, planned, probe)


def _seconds(probe: Outcome | None) -> float | None:
    return probe.result.extract_seconds + probe.result.train_seconds if probe is not None else None


def _finetune_batch(job: Job) -> int:
    """The batch fine-tuning would take: --batch-size, or its default sized for the device."""
    default = job.modality.defaults.strategies["finetune"].batch_size
    return job.config.batch_size or sizing.device_batch(default, len(job.splits.train), job.device).batch_size
