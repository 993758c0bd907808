"""Weight interpolation of the probe and the fine-tuned model (WiSE-FT), `auto`'s stop when
fine-tuning does not beat the probe, and the advice when validation still rose at the budget's end."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_scored
from torch import nn

from graft.training.budget import Clock
from graft.training.callbacks import BehindProbe
from graft.training.interpolate import choose_alpha, mixed


def test_mixed_interpolates_floats_and_keeps_counters_of_the_end():
    start = {"w": torch.zeros(3), "n": torch.tensor(5)}
    end = {"w": torch.full((3,), 4.0), "n": torch.tensor(9)}
    out = mixed(start, end, 0.25)
    assert torch.equal(out["w"], torch.ones(3)) and int(out["n"]) == 9
    assert torch.equal(mixed(start, end, 0.0)["w"], start["w"])
    assert torch.equal(mixed(start, end, 1.0)["w"], end["w"])


def _line():
    model = nn.Linear(1, 1, bias=False)
    return model, {"weight": torch.zeros(1, 1)}, {"weight": torch.ones(1, 1)}


def test_the_best_point_on_the_line_is_loaded_and_ties_go_to_the_kept_end():
    model, start, end = _line()
    peak = lambda m: -float((m.weight - 0.6).abs().sum())  # noqa: E731 - best near the middle
    choice = choose_alpha(model, start, end, {0.0: -0.6, 1.0: -0.4}, peak, lambda s: True)
    assert choice["alpha"] == 0.5 and float(model.weight) == 0.5
    assert list(choice["scores"]) == ["0.0", "0.25", "0.5", "0.75", "1.0"]
    flat = lambda m: 0.7  # noqa: E731 - every point alike: the kept end stays
    for kept_end in (0.0, 1.0):
        choice = choose_alpha(model, start, end, {0.0: 0.7, 1.0: 0.7}, flat, lambda s: True, prefer=kept_end)
        assert choice["alpha"] == kept_end and float(model.weight) == kept_end


def test_the_sweep_scores_no_point_the_time_budget_cannot_pay_for():
    model, start, end = _line()
    scored = []

    def score(m):
        scored.append(float(m.weight))
        return 0.0

    choice = choose_alpha(model, start, end, {0.0: 0.5, 1.0: 0.9}, score, lambda s: False)
    assert scored == [] and choice["alpha"] == 1.0 and float(model.weight) == 1.0


@pytest.mark.parametrize(("scores", "epochs_run"), [([0.5, 0.6, 0.9, 0.9], 2), ([0.5, 0.71, 0.6, 0.6], 4)])
def test_auto_stops_fine_tuning_that_has_not_beaten_the_probe_after_half_its_epochs(scores, epochs_run):
    lines: list[str] = []
    history = fit_scored(nn.Linear(2, 2), scores, BehindProbe(0.7, 2, "val_accuracy", lines.append))
    assert len(history) == epochs_run
    assert bool(lines) == (epochs_run < len(scores))


@pytest.mark.parametrize(("scores", "epochs_run"), [([0.6, 0.9, 0.9, 0.9], 1), ([0.66, 0.75, 0.6, 0.6], 4)])
def test_auto_stops_after_the_first_epoch_below_the_probe_by_over_one_standard_error(scores, epochs_run):
    """The probe scores 0.7 with a standard error of 0.05: a first epoch at 0.6 stops fine-tuning
    there; one at 0.66 (within one SE) continues, and the half-the-epochs rule still applies."""
    lines: list[str] = []
    history = fit_scored(nn.Linear(2, 2), scores, BehindProbe(0.7, 2, "val_accuracy", lines.append, 0.05))
    assert len(history) == epochs_run
    assert any("first epoch" in line for line in lines) == (epochs_run == 1)


def test_validation_still_rising_at_the_budgets_end_says_which_budget_would_help():
    clock = Clock(100.0, started=0.0)
    rows = [{"val_accuracy": 0.5}, {"val_accuracy": 0.6}]
    (advice,) = clock.advice(rows, "val_accuracy", 40.0, None, "accuracy")
    assert "0.5000 -> 0.6000" in advice and "--time-budget 140 " in advice
    assert clock.advice([*rows, {"val_accuracy": 0.55}], "val_accuracy", 60.0, None, "accuracy") == []
    assert clock.advice(rows, "val_accuracy", 40.0, 2, "accuracy") == []  # --epochs given: no advice
    assert Clock(None, started=0.0).advice(rows, "val_accuracy", 40.0, None, "accuracy") == []  # no budget
