"""The training loop's stopping rules: early stopping and the deadline."""

from __future__ import annotations

import time

import torch
from torch import nn

from graft.strategies import HEAD, Stage
from graft.train import LoopConfig, fit


def _toy():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    return model, [(HEAD, list(model.parameters()))], (lambda epoch: [(x, y)])


def test_early_stopping_after_patience_epochs_without_improvement():
    """With patience 2 and a validation accuracy that peaks at epoch 1, training stops after epoch 3."""
    model, groups, batches = _toy()
    scores = iter([0.9, 0.8, 0.85, 0.7, 0.95, 0.99])
    history = fit(
        model,
        groups,
        lambda e: Stage({HEAD: 1.0}),
        batches,
        1,
        lambda m: {"val_accuracy": next(scores)},
        LoopConfig(epochs=6, patience=2),
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
        lambda m: {"val_accuracy": 0.5},
        LoopConfig(epochs=4),
    )
    assert len(history) == 4


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
        lambda m: {},
        LoopConfig(epochs=10**9, lr=1e-2),
        deadline=started + 0.5,
    )
    assert time.perf_counter() - started < 1.5
    assert history[-1]["lr"] < 1e-2 * 0.05
