"""Never worse than the probe: the best validation epoch is kept (the probe's weights included), and
auto fine-tunes only when the probe leaves room for a gain the validation set can show."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fit_scored, make_image_folder
from torch import nn

from graft.tasks import get_task
from graft.training.callbacks import KeepBest
from graft.training.loop import Callback, LoopConfig, fit
from graft.training.strategies import HEAD, Stage, choose_strategy, has_headroom


class Scores(Callback):
    def __init__(self, scores):
        self.scores = iter(scores)

    def on_epoch_end(self, loop, row):
        row["val_accuracy"] = next(self.scores)


class Snapshots(Callback):
    """The model's weights after each epoch, to compare with what KeepBest restores."""

    def __init__(self):
        self.weights = {}

    def on_fit_start(self, loop):
        self.weights[0] = loop.model.weight.detach().clone()

    def on_epoch_end(self, loop, row):
        self.weights[row["epoch"]] = loop.model.weight.detach().clone()


def _fit(scores, start_score=None, path=None):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    keep, snaps = KeepBest(start_score, path), Snapshots()
    history = fit_scored(model, scores, snaps, keep)
    return model, keep, snaps, history


def test_the_best_epoch_is_restored_and_ties_go_to_the_earlier():
    model, keep, snaps, history = _fit([0.5, 0.9, 0.9, 0.7])
    kept = keep.restore(model, history[-1]["epoch"])
    assert kept["epoch"] == 2 and kept["val_accuracy"] == 0.9
    assert "replace the last epoch's (4)" in kept["reason"]
    assert torch.equal(model.weight, snaps.weights[2])


def test_the_probe_is_kept_when_no_epoch_beats_it():
    model, keep, snaps, history = _fit([0.8, 0.95, 0.9], start_score=0.95)
    kept = keep.restore(model, history[-1]["epoch"])
    assert kept["epoch"] == 0 and "the probe's head" in kept["reason"]
    assert torch.equal(model.weight, snaps.weights[0])


def test_the_last_epoch_stays_when_it_is_the_best(tmp_path):
    model, keep, snaps, history = _fit([0.5, 0.6], start_score=0.4, path=tmp_path / "best.safetensors")
    kept = keep.restore(model, 2)
    assert kept["epoch"] == 2 and "last epoch has the best" in kept["reason"]
    assert torch.equal(model.weight, snaps.weights[2])
    resumed = KeepBest(None, tmp_path / "best.safetensors", resume=True)  # what --resume reads back
    resumed.on_fit_start(type("L", (), {"model": model})())
    assert resumed.epoch == 2 and resumed.score == 0.6


def _accuracy(accuracy: float, n_val: int):
    """Single-label's headroom of a probe at this validation accuracy."""
    return get_task("single").headroom({"accuracy": accuracy}, n_val)


def test_probe_headroom_is_the_larger_of_one_percent_and_two_standard_errors():
    assert has_headroom(_accuracy(0.954, 150))[0]  # 4.6% error, 2 SE = 3.4%: room
    headroom = _accuracy(0.995, 1000)
    room, needed = has_headroom(headroom)
    assert not room and headroom.gap == pytest.approx(0.005) and needed == pytest.approx(0.01)
    assert has_headroom(_accuracy(0.985, 1000))[0]  # 1.5% error over a 1% floor (2 SE = 0.8%)
    assert not has_headroom(_accuracy(0.95, 20))[0]  # 5% error but 2 SE = 9.7% on 20 examples


def test_auto_keeps_a_probe_without_headroom_and_fine_tunes_one_with_it():
    chosen, reason = choose_strategy(100, 10.0, None, 5, headroom=_accuracy(0.995, 1000), n_val=1000)
    assert chosen == "linear" and "fine-tuning could not show a gain" in reason
    assert reason.startswith("the probe's validation error 0.5% on 1000 examples is within 1.0% (the larger")
    room = _accuracy(0.80, 1000)
    chosen, reason = choose_strategy(100, 10.0, None, 5, headroom=room, n_val=1000, probe_seconds=5.0)
    assert chosen == "finetune" and "leaves room" in reason and "(10x the probe's 5s)" in reason
    # a GPU fine-tunes an epoch faster than the probe extracted: the ratio says so, never "0x"
    _, reason = choose_strategy(100, 16.0, None, 1, headroom=room, n_val=1000, probe_seconds=35.0)
    assert "(0.46x the probe's 35s)" in reason
    chosen, _ = choose_strategy(100, 1000.0, None, 5, headroom=room, n_val=1000)
    assert chosen == "linear"  # room, but 5000 s do not fit the 900 s default budget


def test_finetune_report_says_what_was_kept_and_removes_its_scratch_file(tmp_path):
    """Also --tta flip and --resize progressive end to end (one run for all, for the suite's time)."""
    import graft
    from graft.config import TrainConfig
    from graft.runner import run

    data = make_image_folder(tmp_path / "data", per_class=8, seed=4)
    config = TrainConfig(data=str(data), strategy="finetune", epochs=2, image_size=32, batch_size=8,
                         tta="flip", resize="progressive", interpolate="auto",
                         out=str(tmp_path / "run"))  # fmt: skip
    lines = []
    result = run(config, log=lines.append)
    report = json.loads((result.run_dir / "report.json").read_text())
    kept = report["kept"]
    scores = {row["epoch"]: row["val_accuracy"] for row in report["history"]}
    assert scores[kept["epoch"]] == max(scores.values())  # the probe is epoch 0
    assert min(e for e, s in scores.items() if s == max(scores.values())) == kept["epoch"]  # ties: earlier
    one_example = 1 / report["validation"]["n"]  # the probe scored on cached features, the rest on images
    mix = kept["interpolation"]  # WiSE-FT between the probe and the kept epoch, chosen on validation
    assert set(mix["scores"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert mix["scores"][str(float(mix["alpha"]))] == max(mix["scores"].values())
    tta = report["tta"]  # the kept weights, then flip averaging on top of them
    assert tta["val_accuracy"]["plain"] == pytest.approx(max(mix["scores"].values()), abs=one_example)
    assert tta["flip"] and report["validation"]["accuracy"] == tta["val_accuracy"]["flip"]
    # the bundle says so, and its predictor averages each image's features with its mirror image's
    assert json.loads((result.run_dir / "graft.json").read_text())["head"]["flip_average"]
    assert "Test-time flip averaging: on (--tta flip)" in (result.run_dir / "report.html").read_text()
    predictor = graft.load(result.run_dir, engine="torch")
    x = torch.from_numpy(predictor.preprocess(sorted(data.glob("*/*"))[:4]))
    model = predictor.model
    with torch.no_grad():
        averaged = model.head((model.body(x).flatten(1) + model.body(x.flip(3)).flatten(1)) / 2)
        assert model.flip_average and torch.allclose(model(x), averaged)
        model.flip_average = False
        assert not torch.allclose(model(x), averaged)
    assert not (result.run_dir / "best.safetensors").exists()
    assert any(line.startswith("fine-tuning: ") and "kept: " in line for line in lines)
    assert "progressive resizing: training crops 24 -> 32 px" in lines  # 2 unfrozen epochs at 32 px


def test_a_candidate_state_is_what_is_kept_when_no_epoch_beats_it():
    """Text: auto's probe is a candidate while fine-tuning starts again from the initial head; if
    no epoch beats it, the candidate's weights (not the model's at the start) come back."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    candidate = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    keep = KeepBest(0.95, start_state=candidate)
    history = fit(
        model,
        [(HEAD, list(model.parameters()))],
        lambda e: Stage({HEAD: 1.0}),
        lambda e: [(x, y)],
        1,
        LoopConfig(epochs=2, lr=0.1),
        callbacks=[Scores([0.6, 0.9]), keep],
    )
    kept = keep.restore(model, history[-1]["epoch"])
    assert kept["epoch"] == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in candidate.items())
