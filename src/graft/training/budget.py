"""--time-budget counts everything, from the start of the run to the written bundle.

Reading and extracting the data is usually the largest fixed cost (5,000 CIFAR-10 images at
224 px: over 200 s on 2 CPU cores), so before it starts a timed sample of extraction sizes it.
When the data cannot be read within its share of the budget, the run says so at once (the
estimate, and what would fit) and trains on a stratified subset that fits, recorded in the plan
and report.json. Fine-tuning then plans on what is left (`left`), and its deadline keeps back the
final evaluation and writing (`recipes.finetune`).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import distributed
from .features import cached_path

if TYPE_CHECKING:
    from .recipes import Job

SAMPLE_INPUTS = 32  # inputs extracted (uncached) to time extraction on this machine and data
# the share of the budget that reading and extracting may take: the rest is for training the head
# (linear) or for the probe's head, decoding the training inputs again and fine-tuning (the others)
EXTRACT_SHARE = {"linear": 0.8, "finetune": 0.5, "gradual": 0.5, "auto": 0.5}
MIN_PER_CLASS = 2  # a subset keeps at least this many training inputs of every class


def left(job: Job) -> float | None:
    """Seconds of --time-budget not yet spent (None without a budget)."""
    if not job.config.time_budget:
        return None
    return job.config.time_budget - (time.perf_counter() - job.started)


def fit_data_to_budget(job: Job, strategy: str) -> None:
    """Under --time-budget, before extraction: time a sample, and when reading the data would not
    fit its share of the budget, train on a stratified subset that does (said at once, recorded)."""
    remaining = distributed.from_main(left(job))  # one plan for every process: rank 0's clock
    if remaining is None:
        return
    splits = job.splits
    n_eval = len(splits.val) + (len(splits.test) if splits.test is not None else 0)
    work = "reading and extracting"
    if _extracts(job, strategy):
        if not _extraction_ahead(job):
            return
        seconds_per_input = distributed.from_main(_time_extraction(job))
        needed = (len(splits.train) + n_eval) * seconds_per_input
    else:  # fine-tuning without a probe: decoding the training inputs once is the fixed cost
        seconds_per_input = distributed.from_main(_time_preparation(job))
        needed, n_eval, work = len(splits.train) * seconds_per_input, 0, "decoding"
        if not needed:
            return
    share = EXTRACT_SHARE.get(strategy, 0.5) * remaining
    if needed <= share:
        return
    classes = len(splits.classes)
    fits = max(classes * MIN_PER_CLASS, int(share / seconds_per_input) - n_eval)
    if fits >= len(splits.train):
        return
    chosen = _stratified(splits.train.labels, fits, job.config.seed)
    budget = job.config.time_budget
    whole = math.ceil(needed / EXTRACT_SHARE.get(strategy, 0.5) + (budget - remaining))
    note = (
        f"time budget {budget:.0f}s: {work} all {len(splits.train) + n_eval} "
        f"{job.modality.unit} would take about {needed:.0f}s, more than the {share:.0f}s share of the "
        f"budget it may use; training on a stratified subset of {len(chosen)} of the "
        f"{len(splits.train)} training {job.modality.unit} that fits (for all of them: "
        f"--time-budget {whole} or more, or smaller inputs: {job.modality.size_option})"
    )
    job.log(note)
    job.plan = job.plan.with_note(note)
    job.budget_subset = {
        "note": note,
        "train": len(chosen),
        "of": len(splits.train),
        "seconds_per_input": round(seconds_per_input, 5),
        "estimated_extraction_seconds": round(needed, 1),
    }
    job.splits = replace(splits, train=splits.train.subset(chosen))


def _extracts(job: Job, strategy: str) -> bool:
    """Whether the run extracts frozen features: a probe (linear, auto, LP-FT's head-only phase)."""
    from .recipes import probes_first

    return strategy in ("linear", "auto") or probes_first(job.config, job.plan)


def _extraction_ahead(job: Job) -> bool:
    """Whether the training features still have to be computed (not in the feature cache)."""
    both = [*job.splits.train.sources, *job.splits.val.sources]
    prep = _probe_prep(job, len(both))
    return not cached_path(job.modality, job.backbone, prep, both, job.config.flip_features).is_file()


def _probe_prep(job: Job, n_examples: int) -> Any:
    """The preprocessing of the features the probe extracts: under a choice of feature layers the
    widest choice's, whose one extraction serves every choice (`recipes._by_layers`)."""
    choices = job.modality.feature_layer_choices(job.config, job.backbone, n_examples)
    if not choices:
        return job.prep
    widest = job.modality.use_feature_layers(job.backbone, job.prep, max(choices))
    job.modality.use_feature_layers(job.backbone, job.prep, min(choices))  # before the probe: the fewest
    return widest


def _time_extraction(job: Job) -> float:
    """Seconds per input of extraction (reading, decoding, the forward pass) on a few training
    inputs, after one warm-up batch (the first pays one-off set-up)."""
    sources = list(job.splits.train.sources)
    warm = sources[: min(8, len(sources))]
    sample = sources[len(warm) : len(warm) + SAMPLE_INPUTS] or warm
    options: dict[str, Any] = {"flip": job.config.flip_features, "batch_size": 64, "desc": "timing"}
    job.modality.encode(job.backbone, job.prep, warm, **options, engine="torch")
    started = time.perf_counter()
    job.modality.encode(job.backbone, job.prep, sample, **options, engine="torch")
    return (time.perf_counter() - started) / len(sample)


def _time_preparation(job: Job) -> float:
    """Seconds per training input of preparing them for fine-tuning (decoding images once)."""
    return job.modality.preparation_seconds(job.prep, job.splits.train.sources)


def _stratified(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted positions of `size` inputs, every class in proportion and at least MIN_PER_CLASS."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:  # several labels or numbers an example: no class to stratify by
        return np.sort(rng.choice(len(labels), size=min(size, len(labels)), replace=False)).astype(np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    share = np.maximum(MIN_PER_CLASS, np.floor(size * counts / counts.sum()).astype(int))
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=min(int(k), int(n)), replace=False)
        for c, k, n in zip(classes, share, counts, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)
