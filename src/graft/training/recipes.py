"""The recipes: `linear_probe` (frozen backbone, cached features, trained head), `finetune` (LP-FT:
a probe first, then the network end to end, whole or by stages) and `choose` (`--strategy auto`).

One plan for every modality: the modality prepares inputs (training batches, evaluation batches,
features) and the recipe does the rest the same way for images and texts. Each recipe returns a
typed `TrainResult`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone
from ..bundle import stale_temp_files
from ..config import Plan, TrainConfig
from ..data.splits import DataSplits, Labelled, SkippedFile
from ..distributed import ranks as distributed
from ..heads import GraftModel, HeadSpec, build_head
from ..modalities.base import Features, Modality
from ..runtime.device import module_device
from ..runtime.inference import forward_all
from ..runtime.precision import autocast
from ..tasks import Task, get_task
from . import budget, interpolate, sizing, strategies
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
    StepTimer,
)
from .checkpoint import Checkpointer
from .features import cached_features
from .loop import Batch, Callback, LoopConfig, clock_schedule, fit, step_schedule
from .trackers import Tracking

Log = Callable[[str], None]
MIN_HEAD_STEPS = 500  # a head on cached features trains for at least this many steps (milliseconds each)
PRECISE_BN_EXAMPLES = 1024  # training inputs that BatchNorm statistics are recomputed from
BUDGET_EPOCH_CAP = 100_000  # under --time-budget without --epochs the deadline ends training


@dataclass
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
    started: float
    log: Log
    task: Task = field(default_factory=lambda: get_task("single"))  # fitted to the training labels
    budget_subset: dict[str, Any] | None = None  # the training subset --time-budget allowed, if any
    growing: Any = None  # --time-budget's subset extracted in chunks (`budget.Growing`): the probe's
    tracking: Tracking = field(default_factory=Tracking)  # --log-to; off by default


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    val: dict[str, Any]  # final validation metrics
    test: dict[str, Any] | None
    n_train: int
    train_seconds: float
    extract_seconds: float = 0.0
    cache_hit: bool = False
    features_engine: dict[str, Any] | None = None  # graft.engine.EngineChoice of the extraction
    phases: list[str] = field(default_factory=list)  # one summary line per phase
    kept: dict[str, Any] | None = None  # which epoch's weights the model holds, and why
    top_losses: list[dict[str, Any]] = field(default_factory=list)  # validation examples most wrong
    scratch_files: list[Path] = field(default_factory=list)  # to remove once the bundle is written
    tta: dict[str, Any] | None = None  # test-time flip averaging: chosen or not, and the evidence
    advice: list[str] = field(default_factory=list)  # what would likely do better (a longer budget)
    initial_head: dict[str, torch.Tensor] | None = None  # a probe's: the head's weights before it trained
    # a probe that kept more feature layers: the probe on the fewest, which fine-tuning starts from,
    # and the kept one, which a fine-tuned model must beat on validation to be kept (`finetune`)
    fewest_layers: ProbeState | None = None
    more_layers: ProbeState | None = None


@dataclass
class ProbeState:
    """A probe on one choice of feature layers, with what it set on the job."""

    layers: int
    result: TrainResult
    head: nn.Module
    task: Task
    plan: Plan

    def restore(self, job: Job, plan: str = "all") -> TrainResult:
        """The job as this probe left it: the body's feature layers, its head and task, and of its
        plan `all`, its `notes` alone (a job with a plan of its own), or `none`."""
        job.prep = job.modality.use_feature_layers(job.backbone, job.prep, self.layers)
        job.model.head, job.task = self.head, self.task
        if plan != "none":
            job.plan = replace(job.plan, notes=self.plan.notes) if plan == "notes" else self.plan
        job.plan = replace(job.plan, preprocessing=job.prep.to_dict())
        return self.result


# --------------------------------------------------------------------------- shared helpers


def loop_config(
    config: TrainConfig, plan: Plan, epochs: int, lr_scale: float = 1.0, **extra: Any
) -> LoopConfig:
    """The loop settings of a run, shared by every recipe (the loss is the task's: `task_loss`)."""
    return LoopConfig(
        epochs=epochs,
        lr=plan.lr * lr_scale,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        seed=config.seed,
        bn_frozen=config.bn == "frozen",
        **extra,
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


def monitored(task: Task) -> str:
    """The history key keep-best, early stopping and the progress bar follow."""
    return f"val_{task.monitor}"


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


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


# --------------------------------------------------------------------------- linear probe


class _FeatureSet:
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
                self.x[start : start + batch_size].to(device),
            )


def _features(job: Job, data: Labelled, desc: str) -> Features:
    feats = budget.taken_extraction(job, data.sources) or cached_features(
        job.modality,
        job.backbone,
        data.sources,
        job.prep,
        flip=job.config.flip_features,
        batch_size=sizing.inference_batch(job.device, 64),
        desc=desc,
        engine=job.config.engine,
    )
    unit = job.modality.unit
    if feats.cached:
        job.log(f"{desc}: {len(data)} feature vectors from the cache")
    else:
        rate = len(data) / max(feats.seconds, 1e-9)
        engine = f" on {feats.engine['name']}" if feats.engine else ""
        job.log(
            f"{desc}: extracted {len(data)} feature vectors in {feats.seconds:.1f}s "
            f"({rate:.0f} {unit}/s{engine})"
        )
    return feats


def _usable(
    feats: Features, data: Labelled, skipped: list[SkippedFile], unit: str
) -> tuple[torch.Tensor, torch.Tensor]:
    for index, reason in sorted(feats.failures.items()):
        warnings.warn(f"skipping unreadable input: {reason}", stacklevel=2)
        skipped.append(SkippedFile(str(data.sources[index]), reason))
    return torch.from_numpy(feats.values[feats.ok]), torch.from_numpy(np.asarray(data.labels)[feats.ok])


def _rows(feats: Features, keep: np.ndarray) -> Features:
    index = np.flatnonzero(keep)
    local = {int(np.searchsorted(index, i)): r for i, r in feats.failures.items() if keep[i]}
    return Features(feats.values[keep], feats.ok[keep], local, feats.seconds, feats.cached)


def head_schedule(config: TrainConfig, plan: Plan, n_train: int) -> tuple[int, int, str | None]:
    """Batch size and epochs for a head on cached features. Epochs alone under-train small data
    (100 examples at batch 256 is one step an epoch), so unless --epochs is given the schedule has at
    least MIN_HEAD_STEPS steps, with batches of at most a quarter of the data; both cost milliseconds.
    The third value says, for people, when the epochs were stretched."""
    batch_size = plan.batch_size
    if config.batch_size is None:
        batch_size = min(batch_size, max(8, n_train // 4))
    epochs, note = plan.epochs, None
    if config.epochs is None:
        needed = math.ceil(MIN_HEAD_STEPS / math.ceil(n_train / batch_size))
        if needed > epochs:
            note = (
                f"{needed} epochs instead of {epochs}: at least {MIN_HEAD_STEPS} steps on {n_train} examples"
            )
            epochs = needed
    return batch_size, epochs, note


def linear_probe(job: Job, *, with_test: bool = True, phase: str = "linear probe") -> TrainResult:
    """Frozen backbone: features computed once (and cached), the head trained on them. Where the
    modality offers a choice of feature layers (text under --feature-layers auto), one probe per
    choice, and the one `_by_layers` keeps."""
    n_examples = len(job.splits.train) + len(job.splits.val)
    choices = job.modality.feature_layer_choices(job.config, job.backbone, n_examples)
    early_stop = phase == "linear probe"  # --patience counts for the probe asked for, not a phase's
    if not choices:
        return _probe_once(job, with_test=with_test, phase=phase, early_stop=early_stop)
    result = _by_layers(job, choices, phase, early_stop)
    if with_test:
        test_on_features(job, result)
    return result


def _by_layers(job: Job, choices: Sequence[int], phase: str, early_stop: bool) -> TrainResult:
    """A probe on the features of each choice of the body's last layers, all from one extraction
    (the widest choice's: its last columns are the fewer layers' features). More layers are kept
    only where they beat the fewest on validation by more than one standard error of that score
    (the task's own: binomial for accuracy), so a choice that wins by noise is not paid for with a
    wider head. The job ends with the kept probe's features, head, task and plan."""
    start_task, start_plan, start_head = job.task, job.plan, job.model.head
    tried: list[ProbeState] = []
    widest = None
    for layers in sorted(choices, reverse=True):  # one extraction: fewer layers are its last columns
        job.task, job.plan = start_task, start_plan
        job.prep = job.modality.use_feature_layers(job.backbone, job.prep, layers)
        job.model.head = start_head if layers == min(choices) else _fresh_head(job)
        initial = {k: v.detach().clone() for k, v in job.model.head.state_dict().items()}
        if widest is None:
            feats = widest = _features(job, _train_and_val(job.splits), "train+val")
        else:
            feats = _last_columns(widest, job.backbone.num_features)
        shown = f"{phase}, {job.modality.feature_choice_name(job.prep, layers)}"
        result = _probe_once(job, with_test=False, phase=shown, early_stop=early_stop, feats=feats)
        result.initial_head = initial
        result.extract_seconds, result.cache_hit = widest.seconds, widest.cached
        result.features_engine = widest.engine
        tried.insert(0, ProbeState(layers, result, job.model.head, job.task, job.plan))
    n_val = len(job.splits.val)
    metric, _, noise = job.task.ranking(tried[0].result.val, n_val)  # the task's choice between models
    scores = {t.layers: job.task.ranking(t.result.val, n_val)[1] for t in tried}
    kept = distributed.from_main(strategies.feature_layers_kept(scores, noise))  # one choice for all
    chosen = next(t for t in tried if t.layers == kept)
    name = partial(job.modality.feature_choice_name, job.prep)
    shown = ", ".join(f"{name(n)}: {score:.4f}" for n, score in scores.items())
    line = (
        f"probe features, validation {metric}: {shown}; the probe keeps {name(kept)} "
        f"(the wider only above the narrowest by more than one standard error, {noise:.4f})"
    )
    phases = [*(p for t in tried for p in t.result.phases), line]
    for state in tried:
        state.plan = state.plan.with_note(line)
        state.result.phases = phases
    result = chosen.restore(job)
    if chosen is not tried[0]:
        result.fewest_layers, result.more_layers = tried[0], chosen
    job.log(line)
    return result


def _fresh_head(job: Job) -> nn.Module:
    """A new head, as the runner builds it, for the body's current feature width; seeded so that
    trying a choice leaves the global random state as it was."""
    config = job.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        spec = HeadSpec.parse(config.head, config.dropout)
        head = build_head(spec, job.backbone.num_features, job.task.outputs())
    return head.to(job.device)


def _train_and_val(splits: DataSplits) -> Labelled:
    """One cache entry for train+val together, so another --seed or --val-fraction still hits it."""
    return Labelled(
        [*splits.train.sources, *splits.val.sources], np.concatenate([splits.train.labels, splits.val.labels])
    )


def _last_columns(feats: Features, width: int) -> Features:
    """Features of fewer layers, read from the widest choice's (`Modality.use_feature_layers`)."""
    return replace(feats, values=feats.values[:, -width:], seconds=0.0, cached=True)  # a view: `_rows` copies


def _probe_once(
    job: Job, *, with_test: bool, phase: str, early_stop: bool, feats: Features | None = None
) -> TrainResult:
    """The probe on the body's features as they are set (or on `feats`, already extracted)."""
    config, plan, splits, head = job.config, job.plan, job.splits, job.model.head
    unit = job.modality.unit
    both = _train_and_val(splits)
    feats = feats if feats is not None else _features(job, both, "train+val")
    in_train = np.arange(len(both)) < len(splits.train)
    x_train, y_train = _usable(_rows(feats, in_train), splits.train, splits.skipped, unit)
    val_rows = _rows(feats, ~in_train)
    x_val, y_val = _usable(val_rows, splits.val, splits.skipped, unit)
    val_sources = [splits.val.sources[i] for i in np.flatnonzero(val_rows.ok)]
    job.task.check(y_train.numpy(), unit)
    head.norm.fit(x_train.to(job.device))
    _start_linear(job, head, x_train, y_train)
    batch_size, epochs, note = head_schedule(config, plan, len(y_train))
    plan = replace(plan, epochs=epochs, batch_size=batch_size)
    job.plan = plan = plan.with_note(f"{phase}: {note}") if note else plan
    loop = loop_config(config, plan, epochs)
    x_dev, y_dev = x_train.to(job.device), y_train.to(job.device)
    val_set = _FeatureSet(x_val, y_val, val_sources)

    def batches(epoch: int) -> Iterator[Batch]:
        order = torch.randperm(
            len(y_train), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)
        )
        for start in range(0, len(y_train), batch_size):
            idx = order[start : start + batch_size].to(job.device)
            yield x_dev[idx], y_dev[idx]

    steps_per_epoch = -(-len(y_train) // batch_size)
    started = time.perf_counter()
    # a small head is too little work to split: extra threads only spin-wait (10x slower on busy cores)
    small = sum(p.numel() for p in head.parameters()) < 1_000_000 and job.device.type == "cpu"
    task, monitor = job.task, monitored(job.task)
    callbacks = [Evaluate(val_set, task), ProgressBar(phase, epochs * steps_per_epoch, monitor)]
    callbacks += job.tracking.callbacks("probe")  # after Evaluate: the rows hold validation numbers
    if early_stop:
        callbacks.append(EarlyStopping(config.patience, monitor))
    with _threads(1 if small else torch.get_num_threads()):
        history = fit(
            head,
            [(strategies.HEAD, list(head.parameters()))],
            strategies.make_strategy("linear", [n for n, _ in job.backbone.groups]),
            batches,
            steps_per_epoch,
            loop,
            callbacks=callbacks,
            loss_fn=task_loss(job),
        )
    job.model.flip_average = config.flip_features  # the head now expects what it was trained on
    val_logits = logits_of(head, val_set)  # one pass for the metrics and the highest losses
    job.task = task = task.tune(val_logits, val_set.labels)  # multi-label: thresholds from validation
    result = TrainResult(
        history=history,
        val=metrics_of(head, val_set, task, val_logits),
        test=None,
        n_train=len(y_train),
        train_seconds=time.perf_counter() - started,
        extract_seconds=feats.seconds,
        cache_hit=feats.cached,
        features_engine=feats.engine,
    )
    result.top_losses = highest_losses(val_logits, val_set, task, job.modality)
    last = history[-1]
    result.kept = {
        "epoch": last["epoch"],
        "reason": "the last epoch: the probe's one-cycle schedule anneals to its end",
    }
    result.phases.append(
        f"{phase}: {len(history)} epochs of {steps_per_epoch} steps on {len(y_train)} feature vectors, "
        f"{task.monitor_short} {last[monitor]:.4f} ({result.train_seconds:.1f}s)"
    )
    job.log(result.phases[-1])
    if with_test:
        test_on_features(job, result)
    return result


@torch.no_grad()
def _start_linear(job: Job, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """A linear head starts at the task's closed-form fit on the probe's features, where it has one
    (`Task.linear_start`: a regression's least squares on few features)."""
    if any(isinstance(m, nn.Linear) for m in head.hidden):
        return
    fit = job.task.linear_start(head.norm(x.to(job.device)), y.to(job.device))
    if fit is not None:
        head.fc.weight.copy_(fit[0])
        head.fc.bias.copy_(fit[1])


def test_on_features(job: Job, result: TrainResult) -> None:
    """The probe's head on the test set's (cached) features, into `result.test`."""
    splits = job.splits
    if splits.test is None:
        return
    test_feats = _features(job, splits.test, "test")
    x_test, y_test = _usable(test_feats, splits.test, splits.skipped, job.modality.unit)
    result.test = metrics_of(job.model.head, _FeatureSet(x_test, y_test), job.task)
    result.extract_seconds += test_feats.seconds


# --------------------------------------------------------------------------- fine-tuning


def probes_first(config: TrainConfig, plan: Plan) -> bool:
    """Head-only epochs can be a probe on cached features when they would see exactly those
    features: the body frozen, BatchNorm statistics included (--bn trainable adapts them)."""
    return plan.strategy == "finetune" and plan.freeze_epochs > 0 and config.bn == "frozen"


def starts_from_probe(job: Job, plan: Plan | None = None) -> bool:
    """Whether fine-tuning continues from the probe's head: LP-FT's head-only phase (`probes_first`),
    or where the modality's features for it need the probe's fit (a bi-encoder's cosine, which
    Sentence-BERT's regression objective takes as it is, calibrated to the target by the probe)."""
    plan = plan or job.plan
    own = plan.strategy == "finetune" and job.modality.fine_tunes_from_probe(job.prep)
    return probes_first(job.config, plan) or own


def probe_head(job: Job) -> TrainResult:
    """finetune's head-only phase as a linear probe on cached features (LP-FT, Kumar et al. 2022):
    the head converges in seconds instead of epochs of backbone passes, and fine-tuning then starts
    from a trained head, whose small gradients distort the pretrained features less."""
    linear = job.modality.defaults.strategies["linear"]
    probe_config = replace(job.config, epochs=None, lr=None, batch_size=None, patience=None)
    probe_plan = replace(
        job.plan,
        strategy="linear",
        epochs=linear.epochs,
        lr=linear.lr,
        batch_size=linear.batch_size,
    )
    initial = {k: v.detach().clone() for k, v in job.model.head.state_dict().items()}
    probe_job = replace(job, config=probe_config, plan=probe_plan)
    result = linear_probe(
        probe_job,
        with_test=False,
        phase="head-only phase, a linear probe on cached features"
        if starts_from_probe(job, replace(job.plan, strategy="finetune"))
        else "linear probe (a candidate: fine-tuning starts afresh and must beat it)",
    )
    result.initial_head = result.initial_head or initial  # the kept feature layers' head, if chosen
    job.task = probe_job.task  # what the probe tuned on validation (multi-label thresholds) is kept
    job.prep = probe_job.prep  # and the feature layers it chose
    job.plan = replace(job.plan, notes=probe_job.plan.notes)  # and what it noted
    return result


@torch.no_grad()
def init_feature_norm(model: GraftModel, inputs: Iterator[torch.Tensor]) -> None:
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


def finetune(job: Job, probe: TrainResult | None = None) -> TrainResult:
    """`finetune` (LP-FT: a probe, then everything with discriminative LRs, gently) and `gradual`
    (ULMFiT's gradual unfreezing), for every modality. `probe`: the head-only probe already ran (`choose`
    runs it first). The model ends with the weights of the best validation score, the probe's included."""
    probe, wider = _probes_to_beat(job, probe)
    config, plan, device = job.config, job.plan, job.device
    train_set, val_set = _prepared_sets(job)
    model, continues, candidate, probe_flips = _starting_model(job, probe, train_set)
    probe_weights = _probe_weights(job, model, probe, continues, candidate)  # for the interpolation
    pretrained, ranked = _probes_as_weights(job, model, probe, wider, candidate)
    groups = [*job.backbone.trainable_groups(), (strategies.HEAD, list(model.head.parameters()))]
    fit_batch_to_memory(job, model, groups, train_set)
    plan = job.plan  # the batch that fits, and its LR
    steps_per_epoch = train_set.steps_per_epoch(plan.batch_size)
    options, epochs = head_phase(plan, plan.epochs, continues)
    job.log(_epochs_line(plan, continues, config.time_budget is not None and not config.epochs))
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
    loop, schedule, limits, shown_epochs = _budget_schedule(job, model, groups, train_set, val_set, loop)
    if config.resize == "progressive":
        # a schedule over epochs needs their count: under --time-budget the clock ends training
        grown = "off under --time-budget" if config.time_budget else train_set.grow_inputs(loop.epochs, model)
        if grown:
            job.log(f"progressive resizing: {grown}")
    checkpointer = Checkpointer(job.run_dir, resume_key(config, plan), resume=config.resume)
    precise_bn = _precise_bn(config, train_set, device)
    task, monitor = job.task, monitored(job.task)
    start_score = probe.val[task.monitor] if probe is not None else None
    keep = KeepBest(start_score, job.run_dir / "best.safetensors", config.resume, candidate, monitor)
    t_train = time.perf_counter()
    try:
        history = fit(
            model,
            groups,
            strategy,
            train_set.batches(plan.batch_size, config.seed, device),
            steps_per_epoch,
            loop,
            callbacks=[
                *precise_bn,
                Evaluate(val_set, task),
                keep,
                ProgressBar("fine-tuning", _int_of(shown_epochs) * steps_per_epoch, monitor),
                EpochLog(job.log, shown_epochs),
                *job.tracking.callbacks("finetune"),
                Checkpoint(checkpointer),
                EarlyStopping(config.patience, monitor),
                *_behind_probe(job, probe, shown_epochs),
                *limits,
            ],
            loss_fn=task_loss(job),
            schedule=schedule,
            data_parallel=True,
        )
    finally:
        train_set.close()  # its loader's workers: not kept through evaluation and the test
    train_seconds = time.perf_counter() - t_train
    kept = _kept_weights(job, model, keep, history, probe, probe_weights, val_set)
    kept = _unless_wider_probe(job, model, wider, pretrained, kept)
    kept = _unless_probe_ranks_higher(job, model, probe, ranked, kept, val_set)
    mix = kept.get("interpolation")
    model.flip_average = probe_flips and (mix["alpha"] == 0 if mix else kept["epoch"] == 0)  # the probe's way
    scratch = [*([] if config.keep_checkpoint else checkpointer.files()), job.run_dir / "best.safetensors"]
    result = _finetune_result(job, model, val_set, history, kept, train_seconds, len(train_set), scratch)
    if history:
        result.phases.append(_summary(job, history, probe, kept, f"{steps_per_epoch} steps", train_seconds))
        job.log(result.phases[-1])
    result.advice = still_rising(job, history, monitor, train_seconds) if _clock_ended(limits) else []
    if probe is not None:
        _merge_probe(result, probe)
    return result


def _probes_to_beat(job: Job, probe: TrainResult | None) -> tuple[TrainResult | None, ProbeState | None]:
    """The probe fine-tuning starts from and is measured against (run here when the plan probes
    first and none ran), and the probe on more feature layers where it kept those, which the
    fine-tuned model must also beat on validation (`_unless_wider_probe`)."""
    if probe is None and starts_from_probe(job):
        probe = probe_head(job)
    if probe is None or probe.more_layers is None or probe.fewest_layers is None:
        return probe, None
    return _fewest_layers(job, probe.fewest_layers), probe.more_layers


def _fewest_layers(job: Job, fewest: ProbeState) -> TrainResult:
    """Fine-tuning trains on the features it would have without the probe's choice (the last
    layer's), starting from, and measured against, the probe on those: richer frozen features are
    the probe's model alone. With the wider probe as fine-tuning's start and bar, `auto` stopped
    SST-2 (3,000 sentences) after 2 epochs, one validation example behind it, and kept a probe 3.8
    points below the fine-tuned model of today (bench/README.md, session 12)."""
    on = job.modality.feature_choice_name(job.prep, fewest.layers)
    job.log(f"fine-tuning: on {on}, from the probe on those")
    return fewest.restore(job, plan="notes")


def _precise_bn(config: TrainConfig, train_set: Any, device: torch.device) -> list[Callback]:
    """From scratch with trainable BatchNorm, the statistics recomputed before each evaluation."""
    if config.weights == "random" and config.bn == "trainable":
        return [PreciseBN(lambda: train_set.plain_inputs(PRECISE_BN_EXAMPLES, device))]
    return []


def _unless_wider_probe(
    job: Job,
    model: GraftModel,
    wider: ProbeState | None,
    start: dict[str, torch.Tensor] | None,
    kept: dict[str, Any],
) -> dict[str, Any]:
    """The kept model, unless the probe that kept more feature layers (`wider`) has the better
    validation score (ties go to the kept model): then the pretrained body (`start`), pooling
    those layers, with that probe's head, so the run never ends below its best probe on
    validation. Fine-tuning's own bar (keep-best, `BehindProbe`) is the probe on its features."""
    monitor = monitored(job.task)
    mix = kept.get("interpolation")
    score = mix["scores"][str(mix["alpha"])] if mix else kept.get(monitor)
    if wider is None or start is None or score is None:
        return kept
    bar = float(wider.result.val[job.task.monitor])
    if not distributed.from_main(bar > float(score)):  # one decision for all processes
        return kept
    model.load_state_dict(start)  # the body as pretrained (the head is replaced next)
    wider.restore(job, plan="none")  # the body's layers, the head, the task; the plan's notes stay
    model.head = wider.head
    what, shown = job.task.monitor_short, f"{bar:.4f} against {float(score):.4f}"
    line = f"the probe on {job.modality.feature_choice_name(job.prep, wider.layers)} is kept: {what} {shown}"
    job.log(line)
    return {"epoch": 0, monitor: bar, "reason": line + " (the fine-tuned model's)"}


def _lr_mult(job: Job) -> float:
    """--lr-mult, or where it is left at its default, the modality's own for these features (a
    bi-encoder's cosine: 1, Sentence-BERT's one rate for every layer)."""
    default = next(f.default for f in fields(TrainConfig) if f.name == "lr_mult")
    own = job.modality.lr_mult(job.prep)
    return own if own is not None and job.config.lr_mult == default else job.config.lr_mult


def _probes_as_weights(
    job: Job,
    model: GraftModel,
    probe: TrainResult | None,
    wider: ProbeState | None,
    candidate: dict[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
    """The weights fine-tuning's end is measured against, taken before it trains: the pretrained
    body for a wider probe (`_unless_wider_probe`), and the probe as a whole model (that body, the
    probe's head) where fine-tuning continues from a probe the modality needs (a bi-encoder's
    cosine, the zero-shot similarity) and the task ranks models by another metric than the one
    keep-best follows (a regression: Spearman against R2; `_unless_probe_ranks_higher`). None where
    there is none."""
    ranks = probe is not None and job.modality.fine_tunes_from_probe(job.prep)  # a bi-encoder's cosine
    ranks = ranks and job.task.ranking(probe.val, len(job.splits.val))[0] != job.task.monitor
    if wider is None and not ranks:
        return None, None
    weights = candidate if candidate is not None else cpu_weights(model)
    return (weights if wider is not None else None), (weights if ranks else None)


def _unless_probe_ranks_higher(
    job: Job,
    model: GraftModel,
    probe: TrainResult | None,
    weights: dict[str, torch.Tensor] | None,
    kept: dict[str, Any],
    val_set: Any,
) -> dict[str, Any]:
    """The kept model, unless the probe ranks higher on validation by the task's own ranking (a
    regression's Spearman, where keep-best followed R2): then the probe (`weights`), so a run never
    ends below its probe on that metric. For a bi-encoder's cosine that probe is the encoder's
    zero-shot similarity, calibrated: what using the encoder untrained would score."""
    if probe is None or weights is None or kept.get("epoch") == 0:
        return kept
    n_val = len(job.splits.val)
    metric, bar, _ = job.task.ranking(probe.val, n_val)
    score = job.task.ranking(metrics_of(model, val_set, job.task), n_val)[1]
    if not distributed.from_main(bar > score):  # one decision for all processes
        return kept
    model.load_state_dict(weights)
    line = f"the probe is kept: validation {metric} {bar:.4f} against the fine-tuned model's {score:.4f}"
    job.log(line)
    return {"epoch": 0, monitored(job.task): probe.val[job.task.monitor], "reason": line}


def _summary(
    job: Job,
    history: list[dict[str, Any]],
    probe: TrainResult | None,
    kept: dict[str, Any],
    steps: str,
    seconds: float,
) -> str:
    """Fine-tuning's one line: the validation curve from the probe, and what was kept."""
    task, monitor = job.task, monitored(job.task)
    curve = " -> ".join(format(row[monitor], ".4f") for row in history)
    start = f"probe {probe.val[task.monitor]:.4f} -> " if probe is not None else ""
    return (
        f"fine-tuning: {len(history)} epoch(s) of {steps}, {task.monitor_short} {start}{curve}; "
        f"kept: {_kept_line(kept)} ({seconds:.1f}s)"
    )


def _kept_weights(
    job: Job,
    model: GraftModel,
    keep: KeepBest,
    history: list[dict[str, Any]],
    probe: TrainResult | None,
    probe_weights: dict[str, torch.Tensor] | None,
    val_set: Any,
) -> dict[str, Any]:
    """Keep-best's epoch loaded into `model`, then (after a probe) the WiSE-FT mix of the probe
    and the fine-tuned weights: what the model ends with, and why."""
    trained = cpu_weights(model) if probe_weights is not None and probe is not None and history else None
    kept = keep.restore(model, history[-1]["epoch"] if history else 0)
    if trained is not None:
        mix = _interpolate(job, model, probe_weights, trained, kept, probe, val_set, history)
        kept["interpolation"] = mix
    return kept


def cpu_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU: a candidate kept while the model trains on."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _probe_weights(
    job: Job, model: GraftModel, probe: TrainResult | None, continues: bool, candidate: dict | None
) -> dict[str, torch.Tensor] | None:
    """The probe as weights of the whole model (the pretrained body with the probe's head), the
    start of the line `_interpolate` walks; None without a probe or with --interpolate off."""
    if probe is None or job.config.interpolate == "off":
        return None
    return cpu_weights(model) if continues else candidate


def _interpolate(
    job: Job,
    model: GraftModel,
    start: dict[str, torch.Tensor],
    trained: dict[str, torch.Tensor],
    kept: dict[str, Any],
    probe: TrainResult,
    val_set: Any,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """WiSE-FT between the probe and the fine-tuned weights (the kept epoch's, or the last epoch's
    when keep-best kept the probe), by the validation score (`interpolate.choose_alpha`)."""
    monitor = monitored(job.task)
    if kept["epoch"] == 0:  # keep-best kept the probe: the line runs to the last epoch
        end, end_score = trained, history[-1][monitor]
    else:
        end, end_score = cpu_weights(model), kept[monitor]
    budget_s = job.config.time_budget

    def affordable(last_seconds: float) -> bool:  # a tenth of the budget stays for the test and bundle
        left = budget.left(job)
        return bool(distributed.from_main(left is None or left - 0.1 * budget_s > 2 * last_seconds))

    def score_of(m: nn.Module) -> float:
        return float(job.task.validation_row(logits_of(m, val_set), val_set.labels)[monitor])

    ends = {0.0: float(probe.val[job.task.monitor]), 1.0: float(end_score)}
    kept_end = 0.0 if kept["epoch"] == 0 else 1.0  # ties go to the model keep-best kept
    choice = interpolate.choose_alpha(model, start, end, ends, score_of, affordable, kept_end)
    shown, what = choice.pop("line"), job.task.monitor_short
    job.log(f"weight interpolation (WiSE-FT), {what} by fine-tuned share: {shown}; kept {choice['alpha']:g}")
    return choice


def _behind_probe(job: Job, probe: TrainResult | None, shown_epochs: str) -> list[Callback]:
    """`auto` only: fine-tuning that has not beaten the probe on validation after half its epochs
    (at least 2) stops (`BehindProbe`); a fine-tuning the user asked for runs its epochs."""
    if probe is None or job.config.strategy != "auto":
        return []
    after = max(2, math.ceil(_int_of(shown_epochs) / 2))
    return [BehindProbe(float(probe.val[job.task.monitor]), after, monitored(job.task), job.log)]


def _clock_ended(limits: list[Callback]) -> bool:
    return any(isinstance(cb, Deadline) and cb.fired for cb in limits)


def still_rising(job: Job, history: list[dict[str, Any]], monitor: str, train_seconds: float) -> list[str]:
    """When the time budget's clock ended training (the caller knows) on its best epoch yet: the
    budget that would allow two more epochs."""
    budget_s, scores = job.config.time_budget, [r[monitor] for r in history if monitor in r]
    if not budget_s or job.config.epochs or len(scores) < 2 or scores[-1] <= max(scores[:-1]):
        return []
    more = math.ceil(budget_s + 2 * train_seconds / len(history))
    return [
        f"validation still rose when the time budget ended fine-tuning ({job.task.monitor_short} "
        f"{scores[-2]:.4f} -> {scores[-1]:.4f}): --time-budget {more} would allow about 2 more epochs"
    ]


def _prepared_sets(job: Job) -> tuple[Any, Any]:
    """The training and validation sets, decoded or tokenised once."""
    t0, modality, splits = time.perf_counter(), job.modality, job.splits
    train_set = modality.training_set(job.config, job.backbone, job.prep, splits.train, splits.skipped)
    job.task.check(train_set.labels.numpy(), modality.unit)
    val_set = modality.eval_set(job.backbone, job.prep, splits.val, splits.skipped)
    job.log(
        f"prepared {len(train_set)} training and {len(val_set)} validation {modality.unit} once "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return train_set, val_set


def _starting_model(
    job: Job, probe: TrainResult | None, train_set: Any
) -> tuple[GraftModel, bool, dict[str, torch.Tensor] | None, bool]:
    """(the model fine-tuning starts from, whether it continues from the probe, the probe's weights
    as the candidate to beat when it does not, whether the probe's head took flip-averaged features).

    LP-FT continues from the probe where the modality's fine-tuning has a head-only phase (images);
    elsewhere (text) the probe, when `auto` ran one, is only a candidate to beat: the head starts
    again from its initial weights, so fine-tuning is what it is without a probe."""
    model = job.modality.prepare_model(job.model, job.device)
    probe_flips = model.flip_average  # the probe's head on flip-averaged features (--flip-features)
    model.flip_average = False  # fine-tuning trains and evaluates on each image as it is
    continues = probe is not None and starts_from_probe(job)
    candidate = None
    if probe is not None and not continues:
        candidate = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if probe.initial_head is not None:
            model.head.load_state_dict(probe.initial_head)
    if not continues:
        init_feature_norm(model, train_set.plain_inputs(256, job.device))
    return model, continues, candidate, probe_flips


def _budget_schedule(
    job: Job, model: nn.Module, groups: Any, train_set: Any, val_set: Any, loop: LoopConfig
) -> tuple[LoopConfig, Any, list[Callback], str]:
    """Under --time-budget: steps timed, a deadline that keeps back the final evaluation, and an LR
    schedule on the clock (the loop config, schedule, limits and the epochs shown). Without it,
    the plan's epochs on the step schedule."""
    config, splits, modality = job.config, job.splits, job.modality
    if not config.time_budget:
        return loop, step_schedule, [], str(loop.epochs)
    batch_size = job.plan.batch_size
    local = distributed.local_batch_size(batch_size)  # what one process takes of a global batch
    per_step = time_steps(model, groups, train_set.timing_batches(local, job.device, 4), loop, task_loss(job))
    n_test = len(splits.test) if splits.test is not None else 0
    # flip averaging (--tta) passes validation twice more, and may double the test's pass
    flips = 2 if modality.mirrors and config.tta != "none" else 0
    n_eval = len(val_set) * (1 + flips) + n_test * (1 + flips // 2)
    # keep back the final evaluation (a forward is ~1/3 of a training step) and a 3% margin
    reserve = n_eval * per_step / (3 * batch_size) + 0.03 * config.time_budget
    deadline = job.started + config.time_budget - reserve
    steps_per_epoch = train_set.steps_per_epoch(batch_size)
    fitting = max(1, round((deadline - time.perf_counter()) / (per_step * steps_per_epoch)))
    fitting = distributed.from_main(fitting)  # several processes show the same (rank 0's timing)
    # the deadline, not a count from a timing (a busy moment can make it pessimistic), ends
    # training and anneals the LR: only --epochs caps the epochs
    epochs = distributed.from_main(loop.epochs if config.epochs else BUDGET_EPOCH_CAP)
    shown = f"~{fitting}" if not config.epochs else str(min(epochs, fitting))
    job.log(
        f"time budget {config.time_budget:.0f}s: {per_step:.3f}s per step, training until "
        f"{deadline - job.started:.0f}s (about {fitting} epoch(s)), the schedule follows the clock"
    )
    return replace(loop, epochs=epochs), clock_schedule(deadline), [Deadline(deadline)], shown


def _finetune_result(
    job: Job,
    model: GraftModel,
    val_set: Any,
    history: list[dict[str, Any]],
    kept: dict[str, Any],
    train_seconds: float,
    n_train: int,
    scratch: list[Path],
) -> TrainResult:
    """The kept model's validation (with its test-time views and tuned thresholds) and test numbers."""
    val_logits, tta = _test_time_views(job, model, val_set)
    job.task = task = job.task.tune(val_logits, val_set.labels)  # multi-label: thresholds from validation
    result = TrainResult(
        history=history,
        val=metrics_of(model, val_set, task, val_logits),
        test=None,
        n_train=n_train,
        train_seconds=train_seconds,
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
    return result


def evaluate_test(job: Job, result: TrainResult) -> None:
    """The model as it is kept on the test split, one full pass, into `result.test` (for a run
    that chose between models before testing any: `runner._best_encoding`)."""
    splits = job.splits
    if splits.test is not None:
        test_set = job.modality.eval_set(job.backbone, job.prep, splits.test, splits.skipped)
        result.test = metrics_of(job.model, test_set, job.task)


def task_loss(job: Job) -> Any:
    return job.task.loss(job.device, job.config.label_smoothing)


def _test_time_views(job: Job, model: GraftModel, val_set: Any) -> tuple[torch.Tensor, dict[str, Any] | None]:
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


def fit_batch_to_memory(job: Job, model: nn.Module, groups: Any, train_set: Any) -> None:
    """A batch grown for the GPU (`sizing.device_batch`) halves until a training step fits in its
    memory; the plan's batch, LR and notes follow. Batches the user gave are taken as they are."""
    config, plan = job.config, job.plan
    default = job.modality.defaults.strategies[plan.strategy].batch_size
    if job.device.type != "cuda" or config.batch_size is not None or plan.batch_size <= default:
        return

    def try_step(batch: int) -> None:
        local = distributed.local_batch_size(batch)
        batches = train_set.timing_batches(local, job.device, 2)
        time_steps(model, groups, batches, LoopConfig(), loss_fn=task_loss(job))

    fitting = sizing.largest_fitting(try_step, plan.batch_size, default)
    if fitting < plan.batch_size:
        note = f"batch {fitting}: {plan.batch_size} did not fit in the GPU's memory"
        lr = plan.lr
        if config.lr is None:  # the square-root rule, back down with the batch
            lr *= math.sqrt(fitting / plan.batch_size)
            note += f", learning rate {lr:.2g}"
        job.plan = replace(plan, batch_size=fitting, lr=lr).with_note(note)
        job.log(note)


def _int_of(shown_epochs: str) -> int:
    return int(shown_epochs.lstrip("~"))


def choose_flip_tta(
    mode: str, model: GraftModel, val_set: Any, plain: torch.Tensor, task: Task | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Test-time flip averaging (fastai's `tta`, timm's `--tta`): each input's features averaged with
    its mirror image's, at twice the prediction cost. Fine-tuning augments with flips, so it
    usually gains (bench/levers.py); `auto` keeps it only when validation shows a gain beyond
    noise (`Task.keeps_flip`: otherwise the cheaper plain model stays), because a mirror image
    means something else in some data. Chosen on the validation set, its validation score reads
    slightly high; --test gives the unbiased figure. Returns the validation logits of the choice and
    report.json's record (with the task's monitored metric with and without: `val_<monitor>`)."""
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


def _kept_line(kept: dict[str, Any]) -> str:
    alpha = (kept.get("interpolation") or {}).get("alpha", None)
    if alpha is not None and 0 < alpha < 1:
        ends = "the probe and " + ("the last epoch" if kept["epoch"] == 0 else f"epoch {kept['epoch']}")
        return f"a mix of {ends}, {alpha:g} of the fine-tuned weights"
    if kept["epoch"] == 0:
        return "the probe"
    return f"epoch {kept['epoch']}" + (" (the last)" if "last epoch has" in kept["reason"] else "")


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


# --------------------------------------------------------------------------- auto


def estimate_epoch_seconds(job: Job, batch_size: int) -> float:
    """Seconds per fine-tuning epoch, from a few timed steps on typical training examples."""
    train = job.splits.train
    sample = train.subset(np.arange(min(len(train), 2 * batch_size)))
    train_set = job.modality.training_set(job.config, job.backbone, job.prep, sample, [])
    model = job.model
    groups = [*job.backbone.trainable_groups(), (strategies.HEAD, list(model.head.parameters()))]
    loop = LoopConfig(epochs=1, lr=0.0, seed=job.config.seed, bn_frozen=job.config.bn == "frozen")
    local = distributed.local_batch_size(batch_size)  # what one process takes of a global batch
    per_step = time_steps(model, groups, train_set.timing_batches(local, job.device, 4), loop, task_loss(job))
    return per_step * math.ceil(len(train) / batch_size)


def _epoch_seconds(job: Job, probe: TrainResult, batch_size: int, epochs: int) -> float:
    """Seconds per fine-tuning epoch for `auto`'s rule. Under --time-budget, when what is left
    cannot hold `epochs` forward passes over the training inputs (what their extraction just
    took: an epoch costs more), that lower bound already rules fine-tuning out, and timing steps
    (minutes on a busy CPU) is not paid for."""
    share = len(job.splits.train) / max(1, len(job.splits.train) + len(job.splits.val))
    floor = probe.extract_seconds * share  # 0 when the features came from the cache
    remaining = budget.left(job)
    if remaining is not None and floor > 0 and epochs * floor > remaining:
        return floor
    return estimate_epoch_seconds(job, batch_size)


@dataclass
class Choice:
    strategy: str
    reason: str
    epochs: int | None  # finetune without --time-budget or --epochs: what the default budget allows
    probe: TrainResult | None  # the probe, when it ran first


def choose(job: Job) -> Choice:
    """`--strategy auto`. When the modality's fine-tuning starts with a probe (LP-FT), the probe runs
    first (seconds to minutes: it is needed either way) and its validation score joins the
    rule (`strategies.choose_strategy`); fine-tuning then continues from it."""
    config, splits = job.config, job.splits
    if job.budget_subset and "auto" in job.budget_subset:  # the budget went to reading: the probe
        decided = job.budget_subset["auto"]
        return Choice(decided["chosen"], decided["reason"], None, None)
    per_class = job.task.examples_per_group(len(splits.train))
    batch_size = (
        config.batch_size
        or sizing.device_batch(
            job.modality.defaults.strategies["finetune"].batch_size, len(splits.train), job.device
        ).batch_size
    )
    default_epochs = finetune_epochs(config, job.modality, "finetune", len(splits.train), batch_size)
    epochs = strategies.auto_epochs(len(splits.train), default_epochs)
    epoch_seconds, probe = 0.0, None
    if per_class >= strategies.MIN_PER_CLASS_TO_FINETUNE:  # only then are the probe and timing worth it
        # the probe runs first for every modality: LP-FT continues from it (images), and where
        # fine-tuning starts afresh (text) it is the model to beat; either way `auto` can stop at it
        probe = probe_head(job)
        epoch_seconds = distributed.from_main(_epoch_seconds(job, probe, batch_size, epochs))  # one for all
    remaining = distributed.from_main(budget.left(job))  # counts the probe and all before it; rank 0's
    chosen, reason = strategies.choose_strategy(
        per_class,
        epoch_seconds,
        None if remaining is None else max(remaining, 1e-9),
        epochs,
        # how far the probe is from perfect, and the noise of its score: the task's rule
        headroom=job.task.headroom(probe.val, len(splits.val)) if probe is not None else None,
        n_val=len(splits.val),
        probe_seconds=probe.extract_seconds + probe.train_seconds if probe is not None else None,
        budget_label="budget" if remaining is None else "left of the time budget",
    )
    if chosen == "linear" and probe is not None and budget.grow_for_the_probe(job):
        probe = probe_head(job)  # again, on what was read in the time fine-tuning would have had
    planned = None
    if chosen == "finetune" and config.time_budget is None and config.epochs is None:
        affordable = int(strategies.DEFAULT_AUTO_BUDGET_S // max(epoch_seconds, 1e-9))
        planned = max(epochs, min(default_epochs, affordable))
    return Choice(chosen, reason, planned, probe)


def train(job: Job, probe: TrainResult | None = None) -> TrainResult:
    """The plan's recipe. A probe that already ran is the linear result (tested here) or the
    first phase of fine-tuning."""
    if job.plan.strategy != "linear":
        return finetune(job, probe)
    if probe is None:
        return linear_probe(job)
    test_on_features(job, probe)
    return probe
