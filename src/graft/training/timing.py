"""What training costs on this machine: steps timed through the loop itself, and what follows
from them: the batch that fits in a GPU's memory, fine-tuning's epochs and, under --time-budget,
its schedule on the clock (`budget.Clock.decide_schedule`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from ..config import Plan, TrainConfig
from ..distributed import ranks
from ..modalities.base import Modality
from . import sizing, strategies
from .budget import Clock, Schedule
from .callbacks import StepTimer
from .job import Job, task_loss
from .loop import Batch, LoopConfig, fit


def time_steps(
    model: nn.Module,
    groups: Sequence[tuple[str, Sequence[nn.Parameter]]],
    batches: list[Batch],
    cfg: LoopConfig,
    loss_fn: Any = None,
) -> float:
    """Seconds per training step of every trainable group, on real batches, through the loop itself
    (forward, backward, optimizer step); the weights are restored afterwards."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    requires = [p.requires_grad for p in model.parameters()]
    everything = strategies.Stage({name: 1.0 for name, _ in groups} | {strategies.HEAD: 1.0})
    timer = StepTimer(steps=len(batches) - 1)
    fit(
        model,
        groups,
        lambda epoch: everything,
        lambda epoch: iter(batches),
        len(batches),
        replace(cfg, epochs=1),
        callbacks=[timer],
        loss_fn=loss_fn,
        data_parallel=True,  # a fine-tuning step as the run takes it
    )
    model.load_state_dict(state)
    for p, flag in zip(model.parameters(), requires, strict=True):
        p.requires_grad_(flag)
    return timer.seconds_per_step


def finetune_epochs(
    config: TrainConfig, modality: Modality, strategy: str, n_train: int, batch_size: int
) -> int:
    """The strategy's epochs; unless --epochs is given, small data gets more, up to the modality's
    max_default_epochs, until it sees min_finetune_steps updates."""
    defaults = modality.defaults
    epochs = config.epochs or defaults.strategies[strategy].epochs
    if config.epochs is None and defaults.min_finetune_steps:
        per_epoch = math.ceil(n_train / batch_size)
        wanted = math.ceil(defaults.min_finetune_steps / per_epoch)
        epochs = max(epochs, min(defaults.max_default_epochs, wanted))
    return epochs


def fit_batch_to_memory(job: Job, model: nn.Module, groups: Any, train_set: Any) -> Plan:
    """A batch grown for the GPU (`sizing.device_batch`) halves until a training step fits in its
    memory: the plan with that batch, its LR and a note. Batches the user gave are taken as they are."""
    config, plan = job.config, job.plan
    default = job.modality.defaults.strategies[plan.strategy].batch_size
    if job.device.type != "cuda" or config.batch_size is not None or plan.batch_size <= default:
        return plan

    def try_step(batch: int) -> None:
        local = ranks.local_batch_size(batch)
        batches = train_set.timing_batches(local, job.device, 2)
        time_steps(model, groups, batches, LoopConfig(), loss_fn=task_loss(job))

    fitting = sizing.largest_fitting(try_step, plan.batch_size, default)
    if fitting >= plan.batch_size:
        return plan
    note = f"batch {fitting}: {plan.batch_size} did not fit in the GPU's memory"
    lr = plan.lr
    if config.lr is None:  # the batch rule's LR, back down with the batch
        lr *= sizing.lr_factor(fitting, default) / sizing.lr_factor(plan.batch_size, default)
        note += f", learning rate {lr:.2g}"
    job.log(note)
    return replace(plan, batch_size=fitting, lr=lr).with_note(note)


def schedule(
    job: Job, model: nn.Module, groups: Any, train_set: Any, val_set: Any, loop: LoopConfig
) -> Schedule:
    """Fine-tuning's epochs and LR schedule: under --time-budget, steps timed and the clock's
    deadline, which keeps back the final evaluation (`Clock.decide_schedule`); without it, the
    plan's epochs on the step schedule."""
    clock, config, splits, modality = job.clock, job.config, job.splits, job.modality
    if not clock.on:
        return Clock.by_epochs(loop.epochs)
    batch_size = job.plan.batch_size
    local = ranks.local_batch_size(batch_size)  # what one process takes of a global batch
    per_step = time_steps(model, groups, train_set.timing_batches(local, job.device, 4), loop, task_loss(job))
    n_test = len(splits.test) if splits.test is not None else 0
    # flip averaging (--tta) passes validation twice more, and may double the test's pass
    flips = 2 if modality.mirrors and config.tta != "none" else 0
    n_eval = len(val_set) * (1 + flips) + n_test * (1 + flips // 2)
    steps_per_epoch = train_set.steps_per_epoch(batch_size)
    epochs = loop.epochs if config.epochs else None
    return clock.decide_schedule(per_step, n_eval, batch_size, steps_per_epoch, epochs)
