"""Fine-tuning: `finetune` (LP-FT: a probe, then everything with discriminative LRs, gently) and
`gradual` (ULMFiT's gradual unfreezing), for every modality. The model ends with the weights
`keep` chooses: keep-best's epoch, the WiSE-FT mix, or a probe that beats them on validation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..bundle import stale_temp_files
from ..config import Plan, TrainConfig
from ..heads import GraftModel
from ..runtime.device import module_device
from ..runtime.precision import autocast
from . import keep, strategies, timing
from .budget import Epochs, Schedule
from .callbacks import (
    BehindProbe,
    Checkpoint,
    Deadline,
    EarlyStopping,
    EpochLog,
    Evaluate,
    KeepBest,
    PreciseBN,
    ProgressBar,
)
from .checkpoint import Checkpointer
from .evaluation import highest_losses, metrics_of, test_time_views
from .job import Job, Outcome, TrainResult, model_with, monitored, task_loss
from .loop import Callback, fit
from .probe import loop_config, starts_from_probe

PRECISE_BN_EXAMPLES = 1024  # training inputs that BatchNorm statistics are recomputed from


@dataclass(frozen=True)
class Start:
    """The model fine-tuning starts from, and how it relates to the probe."""

    model: GraftModel  # fine-tuning's own: the job's body and head, trained in place
    continues: bool  # from the probe's head (LP-FT), or afresh
    candidate: keep.Weights | None  # the probe's weights, the candidate to beat when it does not continue
    probe_flips: bool  # the probe's head took flip-averaged features (--flip-features)


def finetune(job: Job, probe: Outcome | None = None) -> Outcome:
    """`probe`: the head-only probe already ran (`auto.choose` runs it first). The model ends with
    the weights of the best validation score, the probe's included."""
    job, probe, wider = keep.probes_to_beat(job, probe)
    sets = _prepared_sets(job)
    train_set, val_set = sets.train, sets.val
    start = _starting_model(job, probe, train_set)
    model = start.model
    probe_weights = keep.probe_weights(job, model, probe, start.continues, start.candidate)  # WiSE-FT's start
    pretrained, ranked = keep.probes_as_weights(job, model, probe, wider, start.candidate)
    groups = [*job.backbone.trainable_groups(), (strategies.HEAD, list(model.head.parameters()))]
    job = replace(job, plan=timing.fit_batch_to_memory(job, model, groups, train_set))  # its batch, its LR
    config, plan = job.config, job.plan
    loop, strategy, schedule = _loop(job, model, groups, train_set, val_set, start.continues)
    checkpointer = Checkpointer(job.run_dir, resume_key(config, plan), resume=config.resume)
    monitor = monitored(job.task)
    start_score = probe.result.val[job.task.monitor] if probe is not None else None
    best = KeepBest(start_score, job.run_dir / "best.safetensors", config.resume, start.candidate, monitor)
    steps_per_epoch = train_set.steps_per_epoch(plan.batch_size)
    callbacks = _callbacks(job, sets, best, checkpointer, probe, schedule)
    t_train = time.perf_counter()
    try:
        history = fit(
            model,
            groups,
            strategy,
            train_set.batches(plan.batch_size, config.seed, job.device),
            steps_per_epoch,
            loop,
            callbacks=callbacks,
            loss_fn=task_loss(job),
            schedule=schedule.lr_schedule,
            data_parallel=True,
        )
    finally:
        train_set.close()  # its loader's workers: not kept through evaluation and the test
    end = keep.Finetuned(model, val_set, history, time.perf_counter() - t_train, len(train_set))
    kept = keep.kept_weights(job, end, best, probe, probe_weights)
    job, kept = keep.unless_wider_probe(job, model, wider, pretrained, kept)
    kept = keep.unless_probe_ranks_higher(job, end, probe, ranked, kept)
    mix = kept.get("interpolation")
    model.flip_average = start.probe_flips and (mix["alpha"] == 0 if mix else kept["epoch"] == 0)
    scratch = [*([] if config.keep_checkpoint else checkpointer.files()), job.run_dir / "best.safetensors"]
    outcome = _outcome(job, end, kept, scratch)
    _describe(replace(job, task=outcome.task), outcome.result, end, probe, schedule, steps_per_epoch)
    return outcome


def _loop(
    job: Job, model: GraftModel, groups: Any, train_set: Any, val_set: Any, continues: bool
) -> tuple[Any, Any, Schedule]:
    """The loop's settings, the strategy's stages and the schedule (on the clock under --time-budget)."""
    config, plan = job.config, job.plan
    options, epochs = head_phase(plan, plan.epochs, continues)
    job.log(_epochs_line(plan, continues, job.clock.ends_training(config.epochs)))
    strategy = strategies.make_strategy(
        plan.strategy, [n for n, _ in job.backbone.groups], **options, lr_mult=_lr_mult(job)
    )
    loop = loop_config(
        config,
        plan,
        epochs,
        lr_scale=config.lr_after_probe if continues else 1.0,
        cycle="epoch" if plan.strategy == "gradual" else "run",
        pct_start=job.modality.defaults.warmup_share,
    )
    schedule = timing.schedule(job, model, groups, train_set, val_set, loop)
    if schedule.line:
        job.log(schedule.line)
    loop = replace(loop, epochs=schedule.epochs)
    if config.resize == "progressive":
        # a schedule over epochs needs their count: under --time-budget the clock ends training
        grown = "off under --time-budget" if job.clock.on else train_set.grow_inputs(loop.epochs, model)
        if grown:
            job.log(f"progressive resizing: {grown}")
    return loop, strategy, schedule


def _callbacks(
    job: Job, sets: Sets, best: KeepBest, saver: Checkpointer, probe: Outcome | None, schedule: Schedule
) -> list[Callback]:
    """Fine-tuning's callbacks, in the order they run at each epoch's end."""
    config, monitor = job.config, monitored(job.task)
    steps_per_epoch = sets.train.steps_per_epoch(job.plan.batch_size)
    return [
        *_precise_bn(config, sets.train, job.device),
        Evaluate(sets.val, job.task),
        best,
        ProgressBar("fine-tuning", schedule.shown.count * steps_per_epoch, monitor),
        EpochLog(job.log, str(schedule.shown)),
        *job.tracking.callbacks("finetune"),
        Checkpoint(saver),
        EarlyStopping(config.patience, monitor),
        *_behind_probe(job, probe, schedule.shown),
        *schedule.limits,
    ]


def _describe(
    job: Job, result: TrainResult, end: keep.Finetuned, probe: Outcome | None, schedule: Schedule, steps: int
) -> None:
    """Fine-tuning's summary line, the budget's advice and the probe as epoch 0, into `result`."""
    if end.history:
        result.phases.append(_summary(job, end, probe, result.kept or {}, f"{steps} steps"))
        job.log(result.phases[-1])
    monitor, given = monitored(job.task), job.config.epochs
    what = job.task.monitor_short
    if _clock_ended(schedule.limits):
        result.advice = job.clock.advice(end.history, monitor, end.train_seconds, given, what)
    else:
        result.advice = []
    if probe is not None:
        _merge_probe(result, probe.result)


@torch.no_grad()
def init_feature_norm(model: GraftModel, inputs: Any) -> None:
    """The head's feature standardisation from (un-augmented) training inputs."""
    model.body.eval()
    with autocast(module_device(model)):
        feats = torch.cat([model.body(x).flatten(1).float() for x in inputs])
    model.head.norm.fit(feats)


def _epochs_line(plan: Plan, probed: bool, by_the_clock: bool) -> str:
    """What the plan's epochs mean, in the words the epoch lines then count in."""
    body = "until the time budget's deadline" if by_the_clock else f"{plan.epochs} epoch(s)"
    if plan.strategy == "gradual":
        return f"gradual unfreezing: {body}, the first trains the head alone, then one more group each"
    if plan.strategy != "finetune" or not plan.freeze_epochs:
        return f"fine-tuning: {body} that train the backbone"
    head = (
        "the head-only phase was a probe on cached features"
        if probed
        else f"{plan.freeze_epochs} head-only epoch(s) first"
    )
    return f"fine-tuning: {head}, then {body} that train the backbone"


def head_phase(plan: Plan, epochs: int, probed: bool) -> tuple[dict[str, int], int]:
    """The finetune strategy's options and the loop's epochs. `epochs` (--epochs) are the epochs
    that train the backbone; the head-only epochs (--freeze-epochs) come first, on top: done
    already as a probe on cached features, or the loop's first epochs."""
    if plan.strategy != "finetune":
        return {}, epochs
    if probed:
        return {"freeze_epochs": 0}, epochs
    return {"freeze_epochs": plan.freeze_epochs}, plan.freeze_epochs + epochs


def resume_key(config: TrainConfig, plan: Plan) -> dict[str, Any]:
    """The settings a checkpoint must share with the command that resumes it."""
    skip = {"resume", "overwrite", "out", "test", "time_budget", "device", "engine", "keep_checkpoint", "tta"}
    skip.update({"log_to", "interpolate"})  # where numbers go, and the mix after the last epoch
    skip.add("devices")  # a run may continue on another number of processes (not bit for bit)
    # options added later: at their defaults, a checkpoint written before them resumes as it was
    defaults = {"resize": "fixed", "task": "auto", "label_separator": "|", "feature_layers": "auto"}
    defaults |= {"image_column": None, "pair_encoding": "auto"}
    skip.update(name for name, default in defaults.items() if getattr(config, name) == default)
    return {k: v for k, v in config.to_dict().items() if k not in skip} | {"strategy": plan.strategy}


def _precise_bn(config: TrainConfig, train_set: Any, device: torch.device) -> list[Callback]:
    """From scratch with trainable BatchNorm, the statistics recomputed before each evaluation."""
    if config.weights == "random" and config.bn == "trainable":
        return [PreciseBN(lambda: train_set.plain_inputs(PRECISE_BN_EXAMPLES, device))]
    return []


def _lr_mult(job: Job) -> float:
    """--lr-mult, or where it is left at its default, the modality's own for these features (a
    bi-encoder's cosine: 1, Sentence-BERT's one rate for every layer)."""
    default = next(f.default for f in fields(TrainConfig) if f.name == "lr_mult")
    own = job.modality.lr_mult(job.prep)
    return own if own is not None and job.config.lr_mult == default else job.config.lr_mult


def _behind_probe(job: Job, probe: Outcome | None, shown: Epochs) -> list[Callback]:
    """`auto` only: fine-tuning that has not beaten the probe on validation after half its epochs
    (at least 2), or whose first epoch is below it by more than one standard error, stops
    (`BehindProbe`); a fine-tuning the user asked for runs its epochs."""
    if probe is None or job.config.strategy != "auto":
        return []
    after = max(2, math.ceil(shown.count / 2))
    _, score, noise = job.task.ranking(probe.result.val, len(job.splits.val))
    return [BehindProbe(score, after, monitored(job.task), job.log, noise)]


def _clock_ended(limits: list[Callback]) -> bool:
    return any(isinstance(cb, Deadline) and cb.fired for cb in limits)


@dataclass(frozen=True)
class Sets:
    """Fine-tuning's training and validation sets, prepared once."""

    train: Any
    val: Any


def _prepared_sets(job: Job) -> Sets:
    """The training and validation sets, decoded or tokenised once."""
    t0, modality, splits = time.perf_counter(), job.modality, job.splits
    train_set = modality.training_set(job.config, job.backbone, job.prep, splits.train, splits.skipped)
    job.task.check(train_set.labels.numpy(), modality.unit)
    val_set = modality.eval_set(job.backbone, job.prep, splits.val, splits.skipped)
    job.log(
        f"prepared {len(train_set)} training and {len(val_set)} validation {modality.unit} once "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return Sets(train_set, val_set)


def _starting_model(job: Job, probe: Outcome | None, train_set: Any) -> Start:
    """LP-FT continues from the probe where the modality's fine-tuning has a head-only phase (images);
    elsewhere (text) the probe, when `auto` ran one, is only a candidate to beat: the head starts
    again from its initial weights, so fine-tuning is what it is without a probe."""
    prepared = job.modality.prepare_model(job.model, job.device)
    # fine-tuning trains and evaluates on each image as it is
    model = model_with(prepared, prepared.head, flip_average=False)
    continues = probe is not None and starts_from_probe(job)
    candidate = None
    if probe is not None and not continues:
        candidate = keep.cpu_weights(model)
        if probe.result.initial_head is not None:
            model.head.load_state_dict(probe.result.initial_head)
    if not continues:
        init_feature_norm(model, train_set.plain_inputs(256, job.device))
    return Start(model, continues, candidate, probe_flips=prepared.flip_average)


def _outcome(job: Job, end: keep.Finetuned, kept: dict[str, Any], scratch: list[Path]) -> Outcome:
    """The kept model's validation (with its test-time views and tuned thresholds) and test numbers."""
    model, val_set = end.model, end.val_set
    val_logits, tta = test_time_views(job, model, val_set)
    task = job.task.tune(val_logits, val_set.labels)  # multi-label: thresholds from validation
    result = TrainResult(
        history=end.history,
        val=metrics_of(model, val_set, task, val_logits),
        test=None,
        n_train=end.n_train,
        train_seconds=end.train_seconds,
        kept=kept,
        # checkpoint.json first: a run killed while these go is finished, never half-resumable
        scratch_files=scratch + stale_temp_files(job.run_dir),
        top_losses=highest_losses(val_logits, val_set, task, job.modality),
        tta=tta,
    )
    splits = job.splits
    if splits.test is not None:
        test_set = job.modality.eval_set(job.backbone, job.prep, splits.test, splits.skipped)
        result.test = metrics_of(model, test_set, task)
    return Outcome(result, model, task, job.plan, job.prep)


def _summary(job: Job, end: keep.Finetuned, probe: Outcome | None, kept: dict[str, Any], steps: str) -> str:
    """Fine-tuning's one line: the validation curve from the probe, and what was kept."""
    task, monitor = job.task, monitored(job.task)
    curve = " -> ".join(format(row[monitor], ".4f") for row in end.history)
    start = f"probe {probe.result.val[task.monitor]:.4f} -> " if probe is not None else ""
    return (
        f"fine-tuning: {len(end.history)} epoch(s) of {steps}, {task.monitor_short} {start}{curve}; "
        f"kept: {keep.kept_line(kept)} ({end.train_seconds:.1f}s)"
    )


def _merge_probe(trained: TrainResult, probe: TrainResult) -> None:
    """The probe becomes epoch 0 of the history and its time counts in the report."""
    last = probe.history[-1]
    row = {**last, "epoch": 0, "stage": [strategies.HEAD], "lr": 0.0}
    row["train_seconds"] = probe.train_seconds + probe.extract_seconds
    trained.history = [row, *trained.history]
    trained.extract_seconds += probe.extract_seconds
    trained.train_seconds += probe.train_seconds
    trained.cache_hit = probe.cache_hit
    trained.features_engine = probe.features_engine
    trained.phases = [*probe.phases, *trained.phases]

