"""The linear probe: the backbone frozen, its features computed once (and cached), the head
trained on them; where the modality offers a choice of feature layers, one probe a choice and the
one kept (`_by_layers`). Also fine-tuning's head-only phase as such a probe (`probe_head`, LP-FT)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from torch import nn

from ..config import Plan, TrainConfig
from ..data.splits import DataSplits, Labelled, SkippedFile
from ..distributed import ranks
from ..heads import HeadSpec, build_head
from ..modalities.base import Features
from . import sizing, strategies, subset
from .callbacks import EarlyStopping, Evaluate, ProgressBar
from .evaluation import FeatureSet, highest_losses, logits_of, metrics_of
from .features import cached_features
from .job import Job, Outcome, TrainResult, model_with, monitored, probes_first, task_loss
from .loop import Batch, LoopConfig, fit

MIN_HEAD_STEPS = 500  # a head on cached features trains for at least this many steps (milliseconds each)

__all__ = ["linear_probe", "probe_head", "probes_first", "starts_from_probe", "test_on_features"]


def loop_config(
    config: TrainConfig, plan: Plan, epochs: int, lr_scale: float = 1.0, **extra: object
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


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _features(job: Job, data: Labelled, desc: str) -> Features:
    feats = subset.taken_extraction(job, data.sources) or cached_features(
        job.modality,
        job.backbone,
        data.sources,
        job.prep,
        flip=job.config.flip_features,
        batch_size=sizing.inference_batch(job.device, 64),
        desc=desc,
        engine=job.config.engine,
        known=job.known_features,
    )
    unit = job.modality.unit
    if feats.cached:
        job.log(f"{desc}: {len(data)} feature vectors from the cache")
    elif feats.reused == len(data):
        job.log(f"{desc}: {len(data)} feature vectors from the backbone pick's extraction")
    else:
        encoded = len(data) - feats.reused
        rate = encoded / max(feats.seconds, 1e-9)
        engine = feats.engine or {}
        on = f" on {engine['name']}" if engine.get("name") else ""
        decoding = f", decoding {engine['decoder']['reason']}" if engine.get("decoder") else ""
        reused = f", {feats.reused} more from the backbone pick's" if feats.reused else ""
        job.log(
            f"{desc}: extracted {encoded} feature vectors in {feats.seconds:.1f}s "
            f"({rate:.0f} {unit}/s{on}{decoding}){reused}"
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


def linear_probe(job: Job, *, with_test: bool = True, phase: str = "linear probe") -> Outcome:
    """Frozen backbone: features computed once (and cached), the head trained on them. Where the
    modality offers a choice of feature layers (text under --feature-layers auto), one probe per
    choice, and the one `_by_layers` keeps."""
    n_examples = len(job.splits.train) + len(job.splits.val)
    choices = job.modality.feature_layer_choices(job.config, job.backbone, n_examples)
    early_stop = phase == "linear probe"  # --patience counts for the probe asked for, not a phase's
    if not choices:
        return _probe_once(job, job.model.head, with_test=with_test, phase=phase, early_stop=early_stop)
    outcome = _by_layers(job, choices, phase, early_stop)
    if with_test:
        test_on_features(job.after(outcome), outcome.result)
    return outcome


def _by_layers(job: Job, choices: Sequence[int], phase: str, early_stop: bool) -> Outcome:
    """A probe on the features of each choice of the body's last layers, all from one extraction
    (the widest choice's: its last columns are the fewer layers' features). More layers are kept
    only where they beat the fewest on validation by more than one standard error of that score
    (the task's own: binomial for accuracy), so a choice that wins by noise is not paid for with a
    wider head. Ends with the kept probe's features, head, task and plan."""
    start_head, tried, widest = job.model.head, [], None
    for layers in sorted(choices, reverse=True):  # one extraction: fewer layers are its last columns
        job = replace(job, prep=job.modality.use_feature_layers(job.backbone, job.prep, layers))
        head = start_head if layers == min(choices) else _fresh_head(job)
        initial = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if widest is None:
            feats = widest = _features(job, _train_and_val(job.splits), "train+val")
        else:
            feats = _last_columns(widest, job.backbone.num_features)
        shown = f"{phase}, {job.modality.feature_choice_name(job.prep, layers)}"
        probe = _probe_once(job, head, with_test=False, phase=shown, early_stop=early_stop, feats=feats)
        result = probe.result
        result.initial_head = initial
        result.extract_seconds, result.cache_hit = widest.seconds, widest.cached
        result.features_engine = widest.engine
        tried.insert(0, replace(probe, layers=layers))
    task, n_val = tried[0].task, len(job.splits.val)
    metric, _, noise = task.ranking(tried[0].result.val, n_val)  # the task's choice between models
    scores = {t.layers: task.ranking(t.result.val, n_val)[1] for t in tried}
    kept = decide_feature_layers(scores, noise)
    name = partial(job.modality.feature_choice_name, job.prep)
    shown = ", ".join(f"{name(n)}: {score:.4f}" for n, score in scores.items())
    line = (
        f"probe features, validation {metric}: {shown}; the probe keeps {name(kept)} "
        f"(the wider only above the narrowest by more than one standard error, {noise:.4f})"
    )
    phases = [*(p for t in tried for p in t.result.phases), line]
    tried = [replace(t, plan=t.plan.with_note(line)) for t in tried]
    for state in tried:
        state.result.phases = phases
    chosen = next(t for t in tried if t.layers == kept)
    outcome = restored(job, chosen)
    if chosen is not tried[0]:
        outcome.result.fewest_layers, outcome.result.more_layers = tried[0], chosen
    job.log(line)
    return outcome


def decide_feature_layers(scores: dict[int, float], noise: float) -> int:
    """The probe's feature layers (`strategies.feature_layers_kept`): rank 0's, for every process."""
    return ranks.from_main(strategies.feature_layers_kept(scores, noise))


def restored(job: Job, probe: Outcome, plan: str = "all") -> Outcome:
    """The job as the probe on `probe.layers` left it: the body's feature layers, its head and
    task, and of its plan `all`, its `notes` alone (a job with a plan of its own), or `none`."""
    prep = job.modality.use_feature_layers(job.backbone, job.prep, probe.layers)
    kept = job.plan
    if plan != "none":
        kept = replace(job.plan, notes=probe.plan.notes) if plan == "notes" else probe.plan
    kept = replace(kept, preprocessing=prep.to_dict())
    model = model_with(job.model, probe.head, probe.model.flip_average)
    return replace(probe, model=model, plan=kept, prep=prep)


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
    job: Job, head: nn.Module, *, with_test: bool, phase: str, early_stop: bool, feats: Features | None = None
) -> Outcome:
    """The probe of `head` on the body's features as they are set (or on `feats`, already extracted)."""
    config, splits, unit = job.config, job.splits, job.modality.unit
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
    batch_size, epochs, note = head_schedule(config, job.plan, len(y_train))
    plan = replace(job.plan, epochs=epochs, batch_size=batch_size)
    plan = plan.with_note(f"{phase}: {note}") if note else plan
    batches = _Shuffled(x_train.to(job.device), y_train.to(job.device), batch_size, config.seed)
    val_set = FeatureSet(x_val, y_val, val_sources)
    started = time.perf_counter()
    callbacks = _head_callbacks(job, val_set, phase, epochs * batches.steps, early_stop)
    history = _fit_head(job, head, loop_config(config, plan, epochs), batches, callbacks)
    val_logits = logits_of(head, val_set)  # one pass for the metrics and the highest losses
    task = job.task.tune(val_logits, val_set.labels)  # multi-label: thresholds from validation
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
    _summarise(job, result, phase, batches.steps)
    # the head expects what it was trained on (--flip-features)
    outcome = Outcome(result, model_with(job.model, head, config.flip_features), task, plan, job.prep)
    if with_test:
        test_on_features(job.after(outcome), result)
    return outcome


class _Shuffled:
    """A probe's training batches: the feature vectors in a seeded order each epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.steps = -(-len(y) // batch_size)  # a step a batch, the last one short

    def __call__(self, epoch: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        for start in range(0, len(self.y), self.batch_size):
            idx = order[start : start + self.batch_size].to(self.x.device)
            yield self.x[idx], self.y[idx]


def _head_callbacks(job: Job, val_set: FeatureSet, phase: str, total_steps: int, early_stop: bool) -> list:
    """The probe's callbacks: validation, the progress bar, trackers, and early stopping if asked."""
    task, monitor = job.task, monitored(job.task)
    callbacks = [Evaluate(val_set, task), ProgressBar(phase, total_steps, monitor)]
    callbacks += job.tracking.callbacks("probe")  # after Evaluate: the rows hold validation numbers
    if early_stop:
        callbacks.append(EarlyStopping(job.config.patience, monitor))
    return callbacks


def _fit_head(job: Job, head: nn.Module, loop: LoopConfig, batches: _Shuffled, callbacks: list) -> list[dict]:
    """The head's training loop on the cached features."""
    # a small head is too little work to split: extra threads only spin-wait (10x slower on busy cores)
    small = sum(p.numel() for p in head.parameters()) < 1_000_000 and job.device.type == "cpu"
    with _threads(1 if small else torch.get_num_threads()):
        return fit(
            head,
            [(strategies.HEAD, list(head.parameters()))],
            strategies.make_strategy("linear", [n for n, _ in job.backbone.groups]),
            batches,
            batches.steps,
            loop,
            callbacks=callbacks,
            loss_fn=task_loss(job),
        )


def _summarise(job: Job, result: TrainResult, phase: str, steps_per_epoch: int) -> None:
    """The probe's kept epoch and its one line."""
    history, monitor = result.history, monitored(job.task)
    last = history[-1]
    result.kept = {
        "epoch": last["epoch"],
        "reason": "the last epoch: the probe's one-cycle schedule anneals to its end",
    }
    result.phases.append(
        f"{phase}: {len(history)} epochs of {steps_per_epoch} steps on {result.n_train} feature vectors, "
        f"{job.task.monitor_short} {last[monitor]:.4f} ({result.train_seconds:.1f}s)"
    )
    job.log(result.phases[-1])


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
    result.test = metrics_of(job.model.head, FeatureSet(x_test, y_test), job.task)
    result.extract_seconds += test_feats.seconds


def starts_from_probe(job: Job, plan: Plan | None = None) -> bool:
    """Whether fine-tuning continues from the probe's head: LP-FT's head-only phase (`probes_first`),
    or where the modality's features for it need the probe's fit (a bi-encoder's cosine, which
    Sentence-BERT's regression objective takes as it is, calibrated to the target by the probe)."""
    plan = plan or job.plan
    own = plan.strategy == "finetune" and job.modality.fine_tunes_from_probe(job.prep)
    return probes_first(job.config, plan) or own


def probe_head(job: Job) -> Outcome:
    """finetune's head-only phase as a linear probe on cached features (LP-FT, Kumar et al. 2022):
    the head converges in seconds instead of epochs of backbone passes, and fine-tuning then starts
    from a trained head, whose small gradients distort the pretrained features less. The outcome
    keeps the job's plan with the probe's notes added."""
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
    outcome = linear_probe(
        replace(job, config=probe_config, plan=probe_plan),
        with_test=False,
        phase="head-only phase, a linear probe on cached features"
        if starts_from_probe(job, replace(job.plan, strategy="finetune"))
        else "linear probe (a candidate: fine-tuning starts afresh and must beat it)",
    )
    outcome.result.initial_head = outcome.result.initial_head or initial  # the kept layers' head, if chosen
    # what the probe tuned on validation (multi-label thresholds), the feature layers it chose, its notes
    return replace(outcome, plan=replace(job.plan, notes=outcome.plan.notes))
