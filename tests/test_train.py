"""The one training loop and its callbacks: early stopping, the deadline, step timing."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from graft.training.callbacks import Deadline, EarlyStopping, StepTimer
from graft.training.loop import Callback, LoopConfig, clock_schedule, fit
from graft.training.strategies import HEAD, Stage


class FakeScores(Callback):
    """Puts a given validation accuracy into each epoch's row (what Evaluate does with real data)."""

    def __init__(self, scores):
        self.scores = iter(scores)

    def on_epoch_end(self, loop, row):
        row["val_accuracy"] = next(self.scores)


def _toy():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    return model, [(HEAD, list(model.parameters()))], (lambda epoch: [(x, y)])


def test_early_stopping_after_patience_epochs_without_improvement():
    """With patience 2 and a validation accuracy that peaks at epoch 1, training stops after epoch 3."""
    model, groups, batches = _toy()
    scores = [0.9, 0.8, 0.85, 0.7, 0.95, 0.99]
    history = fit(
        model,
        groups,
        lambda e: Stage({HEAD: 1.0}),
        batches,
        1,
        LoopConfig(epochs=6),
        callbacks=[FakeScores(scores), EarlyStopping(2)],
    )
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_no_early_stopping_without_patience():
    """Without --patience every planned epoch runs."""
    model, groups, batches = _toy()
    history = fit(
        model,
        groups,
        lambda e: Stage({HEAD: 1.0}),
        batches,
        1,
        LoopConfig(epochs=4),
        callbacks=[FakeScores([0.5] * 4), EarlyStopping(None)],
    )
    assert len(history) == 4


@pytest.mark.timing
def test_deadline_stops_training_and_anneals_the_lr():
    """A deadline ends training on time, and the clock-following schedule has annealed the LR."""
    model, groups, batches = _toy()
    started = time.perf_counter()
    history = fit(
        model,
        groups,
        lambda e: Stage({HEAD: 1.0}),
        batches,
        1,
        LoopConfig(epochs=10**9, lr=1e-2),
        callbacks=[Deadline(started + 0.5)],
        schedule=clock_schedule(started + 0.5),
    )
    assert time.perf_counter() - started < 1.5
    assert history[-1]["lr"] < 1e-2 * 0.05


@pytest.mark.timing
def test_the_step_that_crosses_the_deadline_runs_annealed():
    """When the time left holds only a step or two, each step takes the LR of the moment it is
    expected to end: the step that crosses the deadline runs annealed, not mid-cycle."""

    class SlowSteps(Callback):
        def on_step_end(self, loop, loss):
            time.sleep(0.25)

    model, groups, batches = _toy()
    fit(model, groups, lambda e: Stage({HEAD: 1.0}), batches, 1, LoopConfig(epochs=1))  # first-call costs
    started = time.perf_counter()
    history = fit(
        model,
        groups,
        lambda e: Stage({HEAD: 1.0}),
        batches,
        1,
        LoopConfig(epochs=10**9, lr=1e-2),
        callbacks=[SlowSteps(), Deadline(started + 0.65)],
        schedule=clock_schedule(started + 0.65),
    )
    assert len(history) <= 4  # one step per epoch: the third crosses the deadline
    assert history[-1]["lr"] < 1e-2 * 0.05, f"final LR {history[-1]['lr']:.2e}"


def test_step_timer_stops_after_its_steps_and_times_the_gaps():
    """The timer ends the fit after steps + 1 steps and reports a positive median gap."""
    model, groups, batches = _toy()
    timer = StepTimer(steps=3)
    history = fit(
        model, groups, lambda e: Stage({HEAD: 1.0}), batches, 1, LoopConfig(epochs=50), callbacks=[timer]
    )
    assert len(history) == 4 and len(timer.ends) == 4
    assert timer.seconds_per_step > 0


def test_callbacks_see_every_step_and_epoch_in_order():
    """on_fit_start, on_step_end per step, on_epoch_end per epoch, on_fit_end, in that order."""
    events = []

    class Recorder(Callback):
        def on_fit_start(self, loop):
            events.append("start")

        def on_step_end(self, loop, loss):
            events.append(f"step{loop.state.step}")

        def on_epoch_end(self, loop, row):
            events.append(f"epoch{row['epoch']}")

        def on_fit_end(self, loop):
            events.append("end")

    model, groups, batches = _toy()
    fit(model, groups, lambda e: Stage({HEAD: 1.0}), batches, 1, LoopConfig(epochs=2), callbacks=[Recorder()])
    assert events == ["start", "step1", "epoch1", "step2", "epoch2", "end"]


def test_steps_hand_callbacks_the_loss_on_the_device_and_the_epoch_row_its_weighted_mean():
    """No host synchronisation per step: callbacks get the loss as a 0-d tensor (read only by those
    that need it), and the epoch's train_loss is the example-weighted mean of its steps' losses."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = [(torch.randn(n, 4), torch.randint(0, 2, (n,))) for n in (8, 8, 3)]
    seen = []

    class Recorder(Callback):
        def on_step_end(self, loop, loss):
            assert isinstance(loss, torch.Tensor) and loss.ndim == 0
            seen.append(float(loss))

    groups = [(HEAD, list(model.parameters()))]
    stage = Stage({HEAD: 1.0})
    cfg = LoopConfig(epochs=1)
    history = fit(model, groups, lambda e: stage, lambda e: data, 3, cfg, callbacks=[Recorder()])
    expected = sum(v * len(y) for v, (_, y) in zip(seen, data, strict=True)) / 19
    assert history[0]["train_loss"] == pytest.approx(expected, rel=1e-6)
