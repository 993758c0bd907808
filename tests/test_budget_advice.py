"""--time-budget's advice when the data does not fit: the option it suggests for smaller inputs is
the run's modality's own (an image run is not told about --max-length, nor a text run about
--image-size)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from graft.cli import _parser
from graft.modalities import get_modality, modalities
from graft.training import subset
from graft.training.budget import Clock


@dataclass
class _Inputs:
    labels: np.ndarray

    @property
    def sources(self) -> list[str]:
        return [f"input-{i}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, chosen: np.ndarray) -> _Inputs:
        return _Inputs(self.labels[chosen])


@dataclass
class _Splits:
    train: _Inputs
    val: _Inputs
    test: None = None
    classes: tuple[str, ...] = ("a", "b")


@dataclass
class _Plan:
    notes: list[str] = field(default_factory=list)

    def with_note(self, note: str) -> _Plan:
        return _Plan([*self.notes, note])


def _over_budget_job(modality_name: str) -> SimpleNamespace:
    """A job whose 200 training inputs take 1 s each to extract, against a 60 s budget."""
    return SimpleNamespace(
        config=SimpleNamespace(time_budget=60.0, seed=0, strategy="linear"),
        clock=Clock(60.0, time.perf_counter()),
        splits=_Splits(_Inputs(np.arange(200) % 2), _Inputs(np.arange(10) % 2)),
        modality=get_modality(modality_name),
        plan=_Plan(),
        budget_subset=None,
        log=lambda line: None,
    )


@pytest.mark.parametrize("name", ["image", "text"])
def test_the_budget_advises_the_size_option_of_the_runs_own_modality(name):
    job = _over_budget_job(name)
    estimate = subset._Estimate(1.0, 10, "reading and extracting", extracts=True)
    note = subset._subset_note(job, estimate, (60.0, 0.85, 50.0), 40, 210.0)
    own = get_modality(name).size_option
    others = {m.size_option for m in modalities().values()} - {own}
    assert f"smaller inputs: {own})" in note and others and not any(o in note for o in others)
    assert "subset of 40 of the 200" in note


def test_each_modality_names_a_size_option_that_graft_train_takes():
    train = _parser().parse_args(["train", "data"])
    for modality in modalities().values():
        assert modality.size_option.startswith("--")
        assert hasattr(train, modality.size_option.removeprefix("--").replace("-", "_"))


def test_the_clock_shares_what_is_left_and_shows_epochs_as_a_count():
    """Each of several runs (pair encodings) gets an equal share of what is left, as a deadline from
    the run's start; fine-tuning's epochs are a number, shown as about N under the clock."""
    from graft.training.budget import Epochs

    started = time.perf_counter() - 40.0  # 40 s spent of 100
    share = Clock(100.0, started).share(2)
    assert share.started == started and 69.0 < share.seconds <= 70.5  # 40 spent + half of the 60 left
    assert Clock(None, started).share(2).seconds is None
    about = Epochs(3, approximate=True)
    assert (str(about), about.count, str(Epochs(3))) == ("~3", 3, "3")
    plain = Clock(None, started).by_epochs(5)
    assert (plain.epochs, plain.limits, str(plain.shown)) == (5, [], "5")
