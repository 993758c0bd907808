"""The data read within --time-budget, which counts everything, from the start of the run to the
written bundle (`budget.Clock`).

Reading and extracting the data is usually the largest fixed cost (5,000 CIFAR-10 images at
224 px: over 200 s on 2 CPU cores), so before it starts a timed sample of extraction sizes it, on
the engine the whole extraction will run on (`graft.runtime.engine.part_of`). When the data cannot be read
within its share of the budget, the run says so at once (the estimate, and what would fit) and
plans a stratified subset that fits. A sample's estimate is rough (a busy machine, one-off costs,
a short sample's padding: 2.6-4.4x too slow was seen under load), so a probe's extraction then runs
in chunks, the training inputs in a seeded order whose every prefix is stratified: the first chunk
is the planned subset, and after each one the speed measured so far decides how many more still
fit the share (the test set's extraction kept back). The subset grows while extraction runs faster
than estimated. The plan and report.json (`data.budget_subset`) record the planned and the used
counts; the features extracted are the feature cache's entry for the training and validation
inputs finally used, as one extraction of them would be.

`auto` whose own share would read too little to fine-tune reads in a probe's share and keeps to
its probe; one that weighed fine-tuning and kept its probe reads on to that share (`Growing`,
`grow_for_the_probe`). Every function that changes the data returns the job on it; the processes
agree on the plan at the `decide_` functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data.splits import Labelled
from ..distributed import ranks
from ..modalities.base import Features
from ..runtime.engine import part_of
from . import budget, sizing, strategies
from .features import cached_path, extract_reusing, store
from .job import Job, probes_first

SAMPLE_INPUTS = 32  # inputs extracted (uncached) to time extraction on this machine and data
# the share of the budget that reading and extracting may take (the test set's included): the rest
# is for training the head, a second or two (linear), or for the probe's head, decoding the training
# inputs again and fine-tuning (the others)
EXTRACT_SHARE = {"linear": 0.85, "finetune": 0.5, "gradual": 0.5, "auto": 0.5}
MIN_PER_CLASS = 2  # a subset keeps at least this many training inputs of every class
# growing stops when fewer inputs than this still fit: each chunk pays its own set-up (decoding
# workers start), which a handful of inputs does not repay
MIN_CHUNK = 8


def _now() -> float:
    return budget._now()  # the clock's (a test makes extraction seem slow or fast there)


@dataclass(frozen=True)
class _Estimate:
    seconds_per_input: float  # from the timed sample
    n_eval: int  # evaluation inputs read besides the training ones (validation, test)
    work: str  # what was timed, for people
    extracts: bool  # features (which can grow by chunks), or fine-tuning's decoding (which cannot)


def fit_data_to_budget(job: Job, strategy: str) -> Job:
    """Under --time-budget, before extraction: time a sample, and when reading the data would not
    fit its share of the budget, plan a stratified subset that does (said at once), grow it while
    extraction runs faster than the sample said (`_grow`), and record both: the job on that data."""
    remaining = job.clock.decide_left()  # one plan for every process: rank 0's clock
    if remaining is None:
        return job
    splits = job.splits
    n_all = len(splits.train) + len(splits.val) + (len(splits.test) if splits.test is not None else 0)
    with part_of(n_all):  # the timed sample and the chunks: parts of one extraction (graft.runtime.engine)
        return _fit_within(job, strategy, remaining)


def decide_room(started: float, fraction: float, remaining: float) -> float:
    """The seconds reading has left of its `fraction` of the budget: rank 0's, for every process."""
    return ranks.from_main(started + fraction * remaining - _now())


def _fit_within(job: Job, strategy: str, remaining: float) -> Job:
    started = _now()  # this process's clock: every decision against it is rank 0's
    estimate = _estimate(job, strategy)
    if estimate is None:
        return job
    splits, rate = job.splits, estimate.seconds_per_input
    needed = (len(splits.train) + estimate.n_eval) * rate
    fraction = EXTRACT_SHARE.get(strategy, 0.5)
    room = decide_room(started, fraction, remaining)  # less the timing itself
    read = min(len(splits.train), _fitting(job, room, rate, estimate.n_eval))  # in its own share
    # `auto` that could not fine-tune what its share reads ends with its probe: it reads in linear's
    # share instead, and keeps to the probe (`auto.choose`)
    why_not = _why_not_fine_tune(job, read, rate, remaining) if strategy == "auto" else None
    probe_only = why_not is not None
    if probe_only:
        fraction = EXTRACT_SHARE["linear"]
        room = decide_room(started, fraction, remaining)
    if needed <= room:
        return job
    fits = _fitting(job, room, rate, estimate.n_eval)
    if fits >= len(splits.train):
        return job
    order = _stratified_order(splits.train.labels, job.config.seed)
    shares = (remaining, fraction, room)
    job.log(_subset_note(job, estimate, shares, fits, needed))  # at once, before the rest
    record = {
        "planned": fits,  # from the timed sample's estimate
        "train": fits,  # the training inputs used
        "of": len(splits.train),
        "seconds_per_input": round(rate, 5),
        "estimated_extraction_seconds": round(needed, 1),
        "extraction_share": fraction,  # of the budget left when it was planned
    }
    if probe_only:  # what `auto` then chooses, and why (`auto.choose`)
        record["auto"] = {"chosen": "linear", "reason": PROBE_ONLY_REASON.format(why=why_not)}
    job = replace(job, budget_subset=record)
    if not estimate.extracts:  # fine-tuning's decoding: the planned subset, as it is
        note = _subset_note(job, estimate, shares, fits, needed)
        record["note"] = note
        train = splits.train.subset(np.sort(order[:fits]))
        return replace(job, plan=job.plan.with_note(note), splits=replace(splits, train=train))
    probe_ends = started + EXTRACT_SHARE["linear"] * remaining
    growing = Growing(splits.train, order, estimate, shares, needed, probe_ends)
    job = replace(job, growing=growing)
    with _as_the_probe_extracts(job, _layer_choices(job, fits)) as prep:
        growing.prep, growing.choices = prep, _layer_choices(job, fits)
        growing.val, growing.spent = _timed_extraction(job, prep, splits.val.sources, "validation")
        _grow(job, growing, fits, started + fraction * remaining)
    return _settle(job, growing)


@dataclass
class Growing:
    """A subset extracted in chunks (`_grow`): what continues it, and its features for the probe."""

    train: Labelled  # all the training inputs, which `order` indexes
    order: np.ndarray
    estimate: _Estimate
    shares: tuple[float, float, float]  # the seconds left when planned, reading's share, what the sample left
    needed: float  # the timed sample's estimate for all the data
    probe_ends: float  # the end of linear's share: `auto` that keeps its probe reads until then
    prep: Any = None
    choices: tuple[int, ...] = ()
    val: Features | None = None
    parts: list[Features] = field(default_factory=list)  # the training chunks, in `order`
    done: int = 0  # training inputs extracted: order[:done]
    spent: float = 0.0  # seconds extraction took, validation's included
    note: str = ""  # the plan's note on it, replaced as it grows
    extracted: tuple[Path, Features] | None = None  # train+val features, until the probe takes them

    @property
    def rate(self) -> float:
        """Seconds per input measured so far."""
        return self.spent / max(1, self.done + len(self.val.ok if self.val is not None else ()))


def grow_for_the_probe(job: Job) -> Job | None:
    """`auto` that ends with its probe, with training data left out and time left: extraction goes
    on to the end of linear's share of the budget (where the probe's own run would have read), and
    the probe then trains on more data. The job on the grown subset, or None where it did not grow."""
    growing = job.growing
    if not isinstance(growing, Growing) or growing.done >= len(growing.order):
        return None
    before = growing.done
    with part_of(len(growing.order) + len(job.splits.val)), _as_the_probe_extracts(job, growing.choices):
        _grow(job, growing, _next_chunk(job, growing, growing.probe_ends), growing.probe_ends)
    if growing.done == before:
        return None
    return _settle(job, growing)


def _settle(job: Job, growing: Growing) -> Job:
    """The job on the subset extracted so far: its training inputs, their features (the feature
    cache's entry for exactly them, and the probe's), report.json's record and the plan's note."""
    splits, done = job.splits, growing.done
    train = _joined(growing.parts, np.argsort(growing.order[:done]))  # the subset's order: sorted
    both = replace(_joined([train, growing.val]), seconds=growing.spent)
    kept = growing.train.subset(np.sort(growing.order[:done]))
    sources = [*kept.sources, *splits.val.sources]
    path = cached_path(job.modality, job.backbone, growing.prep, sources, job.config.flip_features)
    store(path, both)
    growing.extracted = (path, both)
    note = _subset_note(job, growing.estimate, growing.shares, done, growing.needed, growing.rate)
    job.log(note)
    record = job.budget_subset or {}
    record.update(train=done, measured_seconds_per_input=round(growing.rate, 5), note=note)
    notes = [n for n in job.plan.notes if n != growing.note]
    growing.note = note
    return replace(job, plan=replace(job.plan, notes=(*notes, note)), splits=replace(splits, train=kept))


def _why_not_fine_tune(job: Job, n_train: int, seconds_per_input: float, remaining: float) -> str | None:
    """Why `auto`, having read `n_train` training inputs in its share, could not choose to
    fine-tune them (`strategies.choose_strategy`), or None: too few examples a class, or the rest
    of the budget not holding its epochs of forward passes over them at the extraction's speed (an
    epoch costs more: a backward pass, and PyTorch where extraction may run on ONNX Runtime)."""
    per_class, least = job.task.examples_per_group(n_train), strategies.MIN_PER_CLASS_TO_FINETUNE
    if per_class < least:
        return f"{n_train} training examples, {per_class:.0f} a class (< {least})"
    epochs = strategies.auto_epochs(n_train, job.modality.defaults.strategies["finetune"].epochs)
    floor, rest = epochs * n_train * seconds_per_input, (1 - EXTRACT_SHARE["auto"]) * remaining
    if floor <= rest:
        return None
    return (
        f"{n_train} training examples, whose {epochs} fine-tuning epoch(s) take over {floor:.0f}s "
        f"(forward passes alone), more than the {rest:.0f}s the rest of the budget holds"
    )


# why `auto` keeps to the probe when the budget gave reading linear's share (`auto.choose`)
PROBE_ONLY_REASON = (
    "under --time-budget, auto's share of it would read {why}: reading took a probe's share "
    "instead, and the probe on the data read ends the run"
)


def _fitting(job: Job, room: float, seconds_per_input: float, n_eval: int) -> int:
    """Training inputs that can be read in `room` seconds besides the evaluation ones (at least
    MIN_PER_CLASS of every class)."""
    least = max(1, len(job.splits.classes)) * MIN_PER_CLASS
    return max(least, int(room / seconds_per_input) - n_eval)


def _estimate(job: Job, strategy: str) -> _Estimate | None:
    """The timed sample's speed; None when nothing is left to read (the features are cached)."""
    splits = job.splits
    if _extracts(job, strategy):
        if not _extraction_ahead(job):
            return None
        n_eval = len(splits.val) + (len(splits.test) if splits.test is not None else 0)
        seconds = decide_seconds_per_input(_time_extraction, job)  # on the engine the whole will use
        return _Estimate(seconds, n_eval, "reading and extracting", extracts=True)
    # fine-tuning without a probe: decoding the training inputs once is the fixed cost
    seconds = decide_seconds_per_input(_time_preparation, job)
    return _Estimate(seconds, 0, "decoding", extracts=False) if seconds else None


def decide_seconds_per_input(timed: Any, job: Job) -> float:
    """Seconds per input of `timed(job)` (extraction or decoding): rank 0's, for every process."""
    return ranks.from_main(timed(job))


def _subset_note(
    job: Job,
    estimate: _Estimate,
    shares: tuple[float, float, float],
    used: int,
    needed: float,
    measured: float | None = None,
) -> str:
    """What the budget does to the data (`shares`: the seconds left, the fraction of them that
    reading may take, and what the timed sample left of that), and what all of it would need: from
    the timed sample's estimate, or once extraction ran, from its `measured` seconds per input."""
    record = job.budget_subset or {}
    n_train, unit = record.get("of", len(job.splits.train)), job.modality.unit  # all, before the subset
    seconds, (remaining, fraction, room) = float(job.clock.seconds or 0), shares
    share = fraction * remaining
    said = (
        f"time budget {seconds:.0f}s: {estimate.work} all {n_train + estimate.n_eval} {unit} would take "
        f"about {needed:.0f}s by a timed sample, more than the {room:.0f}s left of the {share:.0f}s "
        "share of the budget it may use"
    )
    if measured is None:
        grows = ", grown while extraction runs faster than this estimate" if estimate.extracts else ""
        subset = f"training on a stratified subset of {used} of the {n_train} training {unit} that fits"
        subset += grows
    else:
        planned = record.get("planned", used)
        said += f"; extraction then ran at {measured:.3g}s per input"
        if used == n_train:
            return f"{said}, and all {n_train} training {unit} were used (a subset of {planned} was planned)"
        needed = (n_train + estimate.n_eval) * measured
        subset = (
            f"training on a stratified subset of {used} of the {n_train} training {unit} "
            f"({planned} planned, grown while the share allowed)"
        )
    # all of them, read in the share a run on all of them has, after what came before as now
    whole = math.ceil(needed / EXTRACT_SHARE.get(job.config.strategy, 0.5) + seconds - remaining)
    advice = f"for all of them: --time-budget {whole} or more, or smaller inputs: {job.modality.size_option}"
    return f"{said}; {subset} ({advice})"


def _grow(job: Job, growing: Growing, chunk: int, share_ends: float) -> None:
    """Extract the training inputs in `growing.order` by chunks from where it stands, the first
    `chunk` of them; after each, the speed measured so far decides how many more still fit before
    `share_ends` (`_next_chunk`)."""
    while chunk:
        done = growing.done
        sources = [growing.train.sources[i] for i in growing.order[done : done + chunk]]
        shown = f"training, {done + chunk} of {len(growing.order)}"
        feats, seconds = _timed_extraction(job, growing.prep, sources, shown)
        growing.parts.append(feats)
        growing.done, growing.spent = done + chunk, growing.spent + seconds
        chunk = _next_chunk(job, growing, share_ends)


def _next_chunk(job: Job, growing: Growing, share_ends: float) -> int:
    """How many more training inputs to extract: what fits before `share_ends` at the speed
    measured so far with the test set's extraction kept back, at most as many as are done (a burst
    of load is seen before it costs much), and none where fewer than MIN_CHUNK fit or more inputs
    would change the probe's choice of feature layers (its features were extracted for this one).
    Rank 0's clock decides for every process."""
    done, total, rate = growing.done, len(growing.order), growing.rate
    n_test = len(job.splits.test) if job.splits.test is not None else 0
    fits = int((share_ends - _now() - n_test * rate) / max(rate, 1e-9))
    more = min(total - done, fits, max(MIN_CHUNK, done))
    too_few = more <= 0 or (more < MIN_CHUNK and more < total - done)
    if too_few or _layer_choices(job, done + more) != growing.choices:
        more = 0
    return decide_chunk(more)


def decide_chunk(more: int) -> int:
    """How many more training inputs to extract: rank 0's count, for every process."""
    return int(ranks.from_main(more))


def _timed_extraction(job: Job, prep: Any, sources: Sequence[Any], desc: str) -> tuple[Features, float]:
    """Features of `sources` (shared out between processes) and the seconds they took."""
    started = _now()
    feats = extract_reusing(
        job.known_features,
        job.modality,
        job.backbone,
        prep,
        sources,
        flip=job.config.flip_features,
        batch_size=sizing.inference_batch(job.device, 64),
        desc=desc,
        engine=job.config.engine,
    )
    return feats, _now() - started


def _joined(parts: list[Features], order: np.ndarray | None = None) -> Features:
    """The rows of several extractions one after another (then taken in `order`, when given)."""
    values = np.concatenate([p.values for p in parts]).astype(np.float32, copy=False)
    ok = np.concatenate([p.ok for p in parts])
    offsets = np.cumsum([0, *(len(p.ok) for p in parts)])
    failures = {
        int(first) + i: why for first, p in zip(offsets, parts, strict=False) for i, why in p.failures.items()
    }
    seconds = sum(p.seconds for p in parts)
    engine = next((p.engine for p in parts if p.engine), None)
    if order is not None:
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))  # where each joined row goes
        values, ok = values[order], ok[order]
        failures = {int(position[i]): why for i, why in failures.items()}
    return Features(values, ok, failures, seconds, cached=False, engine=engine)


def taken_extraction(job: Job, sources: Sequence[Any]) -> Features | None:
    """The features `_grow` extracted, once, when `sources` (with the body's current
    preprocessing) are what they were extracted for; otherwise None."""
    growing = job.growing
    if not isinstance(growing, Growing) or growing.extracted is None:
        return None
    path, feats = growing.extracted
    if path != cached_path(job.modality, job.backbone, job.prep, sources, job.config.flip_features):
        return None
    growing.extracted = None
    return feats


def _layer_choices(job: Job, n_train: int) -> tuple[int, ...]:
    """The probe's choice of feature layers for `n_train` training inputs and the validation ones."""
    n_examples = n_train + len(job.splits.val)
    return tuple(job.modality.feature_layer_choices(job.config, job.backbone, n_examples))


@contextmanager
def _as_the_probe_extracts(job: Job, choices: tuple[int, ...]) -> Iterator[Any]:
    """The preprocessing the probe extracts its features with, the body set up for it meanwhile:
    under a choice of feature layers the widest's, whose one extraction serves every choice."""
    if not choices:
        yield job.prep
        return
    try:
        yield job.modality.use_feature_layers(job.backbone, job.prep, max(choices))
    finally:
        job.modality.use_feature_layers(job.backbone, job.prep, min(choices))  # before the probe: the fewest


def _extracts(job: Job, strategy: str) -> bool:
    """Whether the run extracts frozen features: a probe (linear, auto, LP-FT's head-only phase)."""
    return strategy in ("linear", "auto") or probes_first(job.config, job.plan)


def _extraction_ahead(job: Job) -> bool:
    """Whether the training features still have to be computed (not in the feature cache)."""
    both = [*job.splits.train.sources, *job.splits.val.sources]
    prep = _probe_prep(job, len(both))
    return not cached_path(job.modality, job.backbone, prep, both, job.config.flip_features).is_file()


def _probe_prep(job: Job, n_examples: int) -> Any:
    """The preprocessing of the features the probe extracts: under a choice of feature layers the
    widest choice's, whose one extraction serves every choice (`probe._by_layers`)."""
    choices = job.modality.feature_layer_choices(job.config, job.backbone, n_examples)
    if not choices:
        return job.prep
    widest = job.modality.use_feature_layers(job.backbone, job.prep, max(choices))
    job.modality.use_feature_layers(job.backbone, job.prep, min(choices))  # before the probe: the fewest
    return widest


def _time_extraction(job: Job) -> float:
    """Seconds per input of extraction (reading, decoding, the forward pass) on a few training
    inputs, after one warm-up batch (the first pays one-off set-up: an ONNX export, say), on the
    engine the job's extraction will use (inside `part_of`, `_estimate`)."""
    sources = list(job.splits.train.sources)
    warm = sources[: min(8, len(sources))]
    sample = sources[len(warm) : len(warm) + SAMPLE_INPUTS] or warm
    options: dict[str, Any] = {"flip": job.config.flip_features, "batch_size": 64, "desc": "timing"}
    job.modality.encode(job.backbone, job.prep, warm, **options, engine=job.config.engine)
    started = time.perf_counter()
    job.modality.encode(job.backbone, job.prep, sample, **options, engine=job.config.engine)
    return (time.perf_counter() - started) / len(sample)


def _time_preparation(job: Job) -> float:
    """Seconds per training input of preparing them for fine-tuning (decoding images once)."""
    return job.modality.preparation_seconds(job.prep, job.splits.train.sources)


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of the training positions whose every prefix is a stratified subset:
    MIN_PER_CLASS of every class first, then each class at its share of the way (the j-th of a
    class of n at (j + 0.5) / n), so that a prefix holds every class in proportion."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:  # several labels or numbers an example: no class to stratify by
        return rng.permutation(len(labels)).astype(np.int64)
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        j = np.arange(len(members))
        rank[members] = np.where(j < MIN_PER_CLASS, j - MIN_PER_CLASS, (j + 0.5) / len(members))
    return np.lexsort((rng.random(len(labels)), rank)).astype(np.int64)  # ties: in a seeded order
