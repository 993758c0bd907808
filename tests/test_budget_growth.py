"""--time-budget's subset grows while extraction runs faster than its timed sample said.

The timed sample is made to report 5x slower than the extraction then runs (a busy machine, the
sample timed on PyTorch and the data extracted on ONNX Runtime). Extraction's own cost runs on a
virtual clock (`budget._now`: the real clock plus the seconds each extraction is made to take), so
the budget's decisions are tested without sleeping and without depending on the machine's load.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import make_image_folder

from graft.config import TrainConfig
from graft.modalities import image as image_modality
from graft.modalities.base import Features
from graft.runner import run
from graft.runtime.precision import resolve_precision, use_precision
from graft.training import budget
from graft.training import subset as reading
from graft.training.features import _read, cached_path

N_TRAIN, N_VAL = 178, 20  # make_image_folder(per_class=66): 198 images, 10% for validation


class VirtualClock:
    """The real clock plus seconds that extraction is made to take without sleeping."""

    def __init__(self) -> None:
        self.extra = 0.0

    def now(self) -> float:
        return time.perf_counter() + self.extra


def slow_extraction(mp: pytest.MonkeyPatch, seconds_per_image: float, sample_factor: float) -> VirtualClock:
    """Every extraction takes `seconds_per_image` (virtual) an image; the timed sample reports
    `sample_factor` times that."""
    clock = VirtualClock()
    real = image_modality.ImageModality.encode

    def encode(self, backbone, prep, sources, **kw):
        clock.extra += seconds_per_image * len(sources)
        return real(self, backbone, prep, sources, **kw)

    mp.setattr(budget, "_now", clock.now)
    mp.setattr(image_modality.ImageModality, "encode", encode)
    mp.setattr(reading, "_time_extraction", lambda job: sample_factor * seconds_per_image)
    return clock


def budget_run(tmp_path, seconds: float, strategy: str = "linear"):
    data = make_image_folder(tmp_path / "data", per_class=66, seed=0)
    config = TrainConfig(
        data=str(data), strategy=strategy, image_size=32, time_budget=seconds, out=str(tmp_path / "run")
    )
    lines: list[str] = []
    return run(config, log=lines.append), lines


def test_all_the_data_is_used_when_it_fits_though_the_sample_said_it_would_not(tmp_path, monkeypatch):
    """All 198 images take 10 s (virtual) of a 30 s budget's 25.5 s extraction share; the sample,
    5x slow, says 50 s. The plan is a subset; extraction then runs 5x faster and the subset grows
    to all the data, said and recorded (planned and used)."""
    slow_extraction(monkeypatch, seconds_per_image=0.05, sample_factor=5)
    result, lines = budget_run(tmp_path, 30.0)
    subset = result.report["data"]["budget_subset"]
    assert subset["planned"] < N_TRAIN // 2  # what the slow sample allowed
    assert subset["train"] == subset["of"] == N_TRAIN == result.report["data"]["train"]
    assert subset["measured_seconds_per_input"] < subset["seconds_per_input"] / 2
    said = [line for line in lines if "were used" in line]
    assert len(said) == 1 and f"all {N_TRAIN} training images were used" in said[0]
    assert said[0] in result.report["plan"]["notes"]


@pytest.mark.parametrize("strategy", ["linear", "auto"])
def test_the_subset_grows_past_the_plan_and_the_run_ends_within_its_budget(tmp_path, monkeypatch, strategy):
    """All the images take 40 s (virtual) of a 30 s budget: not all of them fit. The subset
    still grows well past what the slow sample planned, stays stratified, and the run ends within
    its budget having used at least 80% of it. `auto`, whose own share would read too little to
    fine-tune, reads in a probe's share and keeps to the probe (it has no time left to fine-tune)."""
    clock = slow_extraction(monkeypatch, seconds_per_image=0.2, sample_factor=5)
    result, lines = budget_run(tmp_path, 30.0, strategy=strategy)
    subset = result.report["data"]["budget_subset"]
    assert subset["planned"] <= 10 and 4 * subset["planned"] < subset["train"] < N_TRAIN
    assert result.report["data"]["train"] == subset["train"]
    counts = np.bincount(np.asarray(result.job.splits.train.labels))
    assert counts.max() - counts.min() <= 1  # every prefix of the order is stratified
    used = clock.now() - result.job.started
    assert 0.8 * 30.0 <= used <= 30.0, f"{used:.1f}s of a 30s budget"
    assert any(f"stratified subset of {subset['train']} of the {N_TRAIN}" in line for line in lines)
    assert result.report["plan"]["strategy"] == "linear"
    if strategy == "auto":
        assert subset["auto"]["chosen"] == "linear" and subset["train"] >= 3 * 20  # past 20 a class
        assert "reading took a probe's share" in result.report["strategy_choice"]["reason"]


def test_the_grown_features_are_the_cache_entry_of_the_inputs_used(tmp_path, monkeypatch):
    """The features extracted in chunks are the probe's, extracted once (not again), and the
    feature cache's entry for exactly the training and validation inputs used."""
    slow_extraction(monkeypatch, seconds_per_image=0.05, sample_factor=5)
    calls: list[int] = []
    timed = image_modality.ImageModality.encode
    monkeypatch.setattr(
        image_modality.ImageModality, "encode",
        lambda self, b, p, sources, **kw: calls.append(len(sources)) or timed(self, b, p, sources, **kw),
    )  # fmt: skip
    result, _ = budget_run(tmp_path, 30.0)
    job = result.job
    subset = result.report["data"]["budget_subset"]
    assert subset["planned"] < subset["train"] == subset["of"] == len(job.splits.train)  # all of them
    assert sum(calls) == len(job.splits.train) + len(job.splits.val)  # each input extracted once
    both = [*job.splits.train.sources, *job.splits.val.sources]
    with use_precision(resolve_precision(job.config.precision, job.device)):  # part of the key
        stored = _read(cached_path(job.modality, job.backbone, job.prep, both, job.config.flip_features))
        fresh = job.modality.encode(job.backbone, job.prep, both, flip=False, batch_size=64, desc="check")
    assert stored is not None and stored.ok.all()
    assert np.allclose(stored.values, fresh.values, atol=1e-3 * np.abs(fresh.values).max())


def test_joined_chunks_keep_each_row_and_failure_at_its_input():
    """Chunks extracted in the growing order are put back in the subset's order (sorted
    positions), each unreadable input's failure following its row."""
    order = np.array([5, 0, 3, 1])  # positions of the chunks' rows, in extraction order

    def part(positions: list[int], failed: dict[int, str]) -> Features:
        values = np.array([[float(p)] for p in positions], dtype=np.float32)
        ok = np.array([i not in failed for i in range(len(positions))])
        return Features(values, ok, failed, 1.0, cached=False)

    joined = reading._joined([part([5, 0], {}), part([3, 1], {1: "broken 1"})], np.argsort(order))
    assert joined.values[:, 0].tolist() == [0, 1, 3, 5]
    assert joined.failures == {1: "broken 1"} and joined.ok.tolist() == [True, False, True, True]
    assert joined.seconds == 2.0


def test_every_prefix_of_the_order_is_a_stratified_subset():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 6)
    order = reading._stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation
    assert (np.bincount(labels[order[:6]], minlength=3) == 2).all()  # MIN_PER_CLASS of each first
    for size in (20, 48, 80):
        counts = np.bincount(labels[order[:size]], minlength=3)
        want = size * np.bincount(labels) / len(labels)
        assert np.abs(counts - want).max() <= 2.5, (size, counts, want)
    assert (reading._stratified_order(labels, seed=3) == order).all()  # seeded


def test_texts_grow_too_and_the_probe_finds_its_four_layer_features(tmp_path, monkeypatch):
    """Text, with the probe choosing between the last layer and the last four: the chunks are
    extracted with the four layers' features (which serve both choices), the subset grows to all
    the reviews, and the probe extracts nothing again (only the test set is left)."""
    from conftest import write_reviews

    from graft.modalities.text import TextModality

    clock = VirtualClock()
    calls: list[int] = []
    real = TextModality.encode

    def encode(self, backbone, prep, sources, **kw):
        clock.extra += 0.05 * len(sources)
        calls.append(len(sources))
        return real(self, backbone, prep, sources, **kw)

    monkeypatch.setattr(budget, "_now", clock.now)
    monkeypatch.setattr(TextModality, "encode", encode)
    monkeypatch.setattr(reading, "_time_extraction", lambda job: 5 * 0.05)
    train, test = write_reviews(tmp_path / "train.csv", 120, 0), write_reviews(tmp_path / "test.csv", 20, 1)
    config = TrainConfig(
        data=str(train), test=str(test),
        text_column="review", label_column="sentiment", strategy="linear", epochs=30, time_budget=20.0,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    result = run(config, log=lambda line: None)
    subset = result.report["data"]["budget_subset"]
    job = result.job
    assert subset["planned"] < subset["train"] == subset["of"] == len(job.splits.train)
    assert sum(calls) == len(job.splits.train) + len(job.splits.val) + 20  # each once, the test set last
    assert any(note.startswith("probe features") for note in result.report["plan"]["notes"])


def test_auto_that_keeps_its_probe_reads_on_in_the_time_fine_tuning_would_have_had(tmp_path, monkeypatch):
    """`auto` whose share could read enough to fine-tune in one epoch (as on large data) keeps its
    own share; when it then keeps the probe, extraction goes on to the end of a probe's share, the
    probe trains again on the larger subset, and the run uses at least 80% of its budget."""
    from graft.training import auto, strategies

    clock = slow_extraction(monkeypatch, seconds_per_image=0.3, sample_factor=1)
    monkeypatch.setattr(strategies, "MIN_EXAMPLES_SEEN", 50)  # one epoch is enough, as on large data
    monkeypatch.setattr(auto, "estimate_epoch_seconds", lambda job, batch: 100.0)  # too slow to fit
    lines: list[str] = []
    data = make_image_folder(tmp_path / "data", per_class=66, seed=0)
    config = TrainConfig(data=str(data), image_size=32, time_budget=60.0, out=str(tmp_path / "run"))
    result = run(config, log=lines.append)
    subset = result.report["data"]["budget_subset"]
    grown = [line for line in lines if "extraction then ran at" in line]
    assert "auto" not in subset and subset["extraction_share"] == reading.EXTRACT_SHARE["auto"]
    assert len(grown) == 2 and result.report["plan"]["strategy"] == "linear"
    first = int(grown[0].split("stratified subset of ")[1].split()[0])
    assert first < subset["train"] < N_TRAIN and result.report["data"]["train"] == subset["train"]
    said = f"subset of {subset['train']} of the {N_TRAIN} training images ({subset['planned']} planned"
    assert said in grown[-1]
    assert sum(grown[-1] == note for note in result.report["plan"]["notes"]) == 1  # replaced, not added
    used = clock.now() - result.job.started
    assert 0.8 * 60 <= used <= 60, f"{used:.1f}s of a 60s budget"


def test_auto_does_not_time_fine_tuning_that_the_time_left_cannot_hold(monkeypatch):
    """An epoch costs more than a forward pass over the training inputs (what their extraction
    took): with fewer seconds left than auto's epochs of that, fine-tuning is ruled out without
    timing its steps (which took 80-90 s on a busy 2-core machine, past a 60 s budget)."""
    from types import SimpleNamespace

    from graft.training import auto

    timed: list[int] = []
    monkeypatch.setattr(auto, "estimate_epoch_seconds", lambda job, batch: timed.append(1) or 7.0)
    monkeypatch.setattr(budget, "_now", lambda: 70.0)
    splits = SimpleNamespace(train=[0] * 90, val=[0] * 10)
    job = SimpleNamespace(clock=budget.Clock(100.0, started=0.0), splits=splits)
    probe = SimpleNamespace(result=SimpleNamespace(extract_seconds=20.0))  # 18 s of it training; 30 s left
    assert auto._epoch_seconds(job, probe, 64, epochs=2) == 18.0 and timed == []
    assert auto._epoch_seconds(job, probe, 64, epochs=1) == 7.0 and timed == [1]
    cached = SimpleNamespace(result=SimpleNamespace(extract_seconds=0.0))  # from the cache: no bound known
    assert auto._epoch_seconds(job, cached, 64, epochs=2) == 7.0 and len(timed) == 2
    job.clock = budget.Clock(None, started=0.0)  # no budget: timed as ever
    assert auto._epoch_seconds(job, probe, 64, epochs=2) == 7.0 and len(timed) == 3
