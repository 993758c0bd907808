"""The learning-rate range test and balanced class weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from torch import nn

from graft.cli import main
from graft.tasks import get_task
from graft.training.lr_find import lr_range_test, suggest_lr


def test_suggestion_is_where_the_loss_falls_fastest():
    """On a synthetic curve (flat, steep fall near 1e-3, divergence) the suggestion lands on the fall."""
    lrs = np.logspace(-7, 1, 80)
    losses = 2.0 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 3) * 4)) + np.where(lrs > 1, (lrs - 1) * 5, 0)
    assert 3e-4 < suggest_lr(lrs, losses) < 3e-3


def test_range_test_grows_the_lr_and_restores_the_weights():
    """LRs grow geometrically, the test stops once the loss diverges, and the model is left untouched."""
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    lrs, losses = lr_range_test(model, iter([(x, y)] * 200), start=1e-5, end=1e3, steps=200)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0]) and ratios[0] > 1
    assert len(lrs) < 200  # diverged at huge LRs and stopped early
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_balanced_class_weights():
    """'balanced' weights: n / (classes * count), so a class 3x rarer weighs 3x more."""
    task = get_task("single", ["a", "b"]).fit(np.array([0, 0, 0, 1]), {"class_weights": "auto"})
    assert task.state["class_weights"] == pytest.approx([4 / 6, 2.0])
    assert get_task("single", ["a", "b"]).fit(np.array([0, 0, 0, 1]), {}).state == {}


def test_cli_lr_find_writes_plot_and_suggestion(tmp_path, capsys):
    """`graft lr-find DIR --json` prints a positive suggested_lr and writes lr_find.png/json."""
    data = make_image_folder(tmp_path / "data", per_class=6, seed=0)
    out = tmp_path / "lrf"
    code = main(["lr-find", str(data), "--image-size", "32", "--steps", "30", "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["suggested_lr"] > 0
    assert (out / "lr_find.png").is_file()
    saved = json.loads((out / "lr_find.json").read_text())
    assert len(saved["lrs"]) == len(saved["losses"]) > 5


def test_lr_find_sets_up_as_train_does_random_weights_and_train_groups(tmp_path, capsys):
    """lr-find shares train's setup (runner.prepare): `--weights random` builds the architecture
    alone (it was taken for a weights file), and --train-groups freezes what train freezes."""
    data = make_image_folder(tmp_path / "data", per_class=6, seed=0)
    out = tmp_path / "lrf"
    argv = ["lr-find", str(data), "--image-size", "32", "--steps", "12", "--out", str(out), "--json"]
    code = main([*argv, "--weights", "random", "--strategy", "finetune", "--train-groups", "2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "fine-tuning trains the top 2 of" in printed.out + printed.err
    assert json.loads(printed.out.strip().splitlines()[-1])["strategy"] == "finetune"
    code = main([*argv, "--weights", str(tmp_path / "missing.pth")])
    assert code != 0 and "missing.pth" in capsys.readouterr().err


def _loss_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[float] | None, float]]:
    """nn.CrossEntropyLoss.forward wrapped (it still computes the loss): records the class weights
    and the label smoothing of every training loss computed (validation uses F.cross_entropy)."""
    seen: list[tuple[list[float] | None, float]] = []
    real = nn.CrossEntropyLoss.forward

    def forward(self, logits, target):
        seen.append((None if self.weight is None else self.weight.tolist(), self.label_smoothing))
        return real(self, logits, target)

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", forward)
    return seen


def test_cli_class_weights_and_label_smoothing_reach_the_loss(tmp_path, capsys, monkeypatch):
    """Imbalanced data (12 / 6 / 3 images): with --class-weights auto --label-smoothing 0.1 every
    training loss weighs class k by n / (classes * n_k) of the training split (computed here from the
    folder counts minus the validation counts in report.json) and smooths by 0.1; without the
    options, no weights and no smoothing."""
    data = make_image_folder(tmp_path / "data", per_class=12, seed=0)
    folder_counts = {"blue": 12, "green": 6, "red": 3}
    for label, keep in folder_counts.items():
        for extra in sorted((data / label).iterdir())[keep:]:
            extra.unlink()
    argv = ["train", str(data), "--strategy", "linear", "--image-size", "32", "--epochs", "3"]
    argv += ["--val-fraction", "0.25"]
    seen = _loss_spy(monkeypatch)
    out = tmp_path / "run"
    assert main([*argv, "--class-weights", "auto", "--label-smoothing", "0.1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == list(folder_counts)
    val_counts = np.sum(report["validation"]["confusion_matrix"], axis=1)
    train_counts = np.array(list(folder_counts.values())) - val_counts
    assert train_counts.sum() == report["data"]["train"]
    expected = train_counts.sum() / (3 * train_counts)
    assert expected.max() / expected.min() >= 2  # really imbalanced: the weights differ
    assert seen, "no training loss was computed"
    for weights, smoothing in seen:
        assert weights == pytest.approx(expected.tolist(), rel=1e-6)
        assert smoothing == pytest.approx(0.1)

    seen.clear()
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert seen and all(entry == (None, 0.0) for entry in seen)
    capsys.readouterr()
