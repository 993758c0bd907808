"""What each task decides beyond training and predicting: `graft compare`'s data sizes and its
monitored metric, `--tta auto` (test-time flip averaging kept on the task's validation evidence)
and `auto`'s "the probe leaves no headroom" rule (the task's gap to a perfect score and its noise),
for single-label, multi-label and regression."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import write_image_table
from torch import nn

from graft.data.splits import stratified_subset
from graft.heads import GraftModel
from graft.tasks import get_task
from graft.tasks.base import cover_groups
from graft.training import strategies
from graft.training.evaluation import choose_flip_tta

# --------------------------------------------------------------------------- compare's data sizes


def test_multi_label_sizes_give_every_label_at_least_n_positives_or_all_it_has():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 4)) < [0.0, 0.1, 0.4, 0.8]).astype(np.float32)
    labels[rng.choice(400, 6, replace=False), 0] = 1.0  # a rare label: 6 positives
    task = get_task("multi", ["a", "b", "c", "d"])
    picked = task.training_subset(labels, 10, seed=3)
    positives = labels[picked].sum(0)
    assert positives[0] == labels[:, 0].sum() < 10  # the rare label: every positive it has
    assert (positives[1:] >= 10).all()
    assert len(picked) <= 10 * 4 and list(picked) == sorted(set(picked.tolist()))  # sorted, no repeats
    assert np.array_equal(task.training_subset(labels, 10, seed=3), picked)  # seeded
    assert not np.array_equal(task.training_subset(labels, 10, seed=4), picked)
    assert task.size_reached(labels) == int(labels.sum(0).min())  # "all": the rarest label's count


def test_regression_sizes_count_examples_per_decile_of_each_target():
    rng = np.random.default_rng(1)
    targets = rng.lognormal(size=(500, 1)).astype(np.float32)  # skewed: deciles, not equal widths
    task = get_task("regression", ["y"])
    groups = task.size_groups(targets)
    assert groups.shape == (500, 10) and (groups.sum(1) == 1).all() and (groups.sum(0) == 50).all()
    picked = task.training_subset(targets, 7, seed=0)
    assert len(picked) == 70 and (groups[picked].sum(0) == 7).all()  # 7 from each tenth of the range
    assert task.size_reached(targets) == 50
    two = np.c_[targets, rng.normal(size=500)]  # several targets: each one's deciles are covered
    both = get_task("regression", ["y", "z"])
    assert (both.size_groups(two)[both.training_subset(two, 3, 0)].sum(0) >= 3).all()


def test_single_label_sizes_are_the_stratified_draws_compare_always_made():
    labels = np.repeat([0, 1, 2], [30, 12, 40])
    task = get_task("single", ["a", "b", "c"])
    assert np.array_equal(task.training_subset(labels, 20, 5), stratified_subset(labels, 12, 5))  # smallest
    assert np.array_equal(task.training_subset(labels, 5, 5), stratified_subset(labels, 5, 5))
    val = task.validation_subset(labels, 20, 0)
    assert np.bincount(labels[val]).tolist() == [20, 12, 20]  # at most 20 of each, all of a smaller class
    assert task.size_reached(labels) == 12


def test_cover_groups_fills_the_rarest_group_first():
    groups = np.zeros((6, 2), bool)
    groups[:, 1] = True  # everything carries the common group
    groups[[1, 4], 0] = True  # two carry the rare one too
    picked = cover_groups(groups, 2, seed=0)
    assert picked.tolist() == [1, 4]  # they cover both groups: nothing else is needed


@pytest.mark.parametrize(
    ("task", "column", "size", "metric", "unit", "name"),
    [
        ("multi", "labels", 4, "map", "per label", "mAP"),
        ("regression", "brightness", 2, "r2", "per decile", "R2"),
    ],
)
def test_compare_runs_multi_label_and_regression_on_the_tasks_sizes_and_metric(
    tmp_path, capsys, task, column, size, metric, unit, name
):
    from graft.cli import main
    from graft.compare import headline, load_summary

    data, out = write_image_table(tmp_path / "data", 75, 0), tmp_path / "c"
    argv = [
        "compare",
        str(data),
        "--label-column",
        column,
        "--task",
        task,
        "--labels-per-class",
        f"{size},all",
    ]
    assert main([*argv, "--methods", "linear", "--image-size", "32", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "seed 0" in line]
    summary = load_summary(out)
    assert summary["task"] == task
    rows = {r["all"]: r for r in summary["rows"]}
    assert np.isfinite(rows[False][f"test_{metric}"]) and f"validation_{metric}" in rows[True]
    assert "test_accuracy" not in rows[False]
    assert rows[False]["train_examples"] < rows[True]["train_examples"]
    if task == "regression":
        assert rows[False]["train_examples"] == 10 * size  # `size` from each decile of the pool
    else:  # at least `size` positives of each of the 4 labels: fewer than all of them
        assert rows[False]["train_examples"] <= 4 * size
    assert rows[True]["labels_per_class"] >= size  # "all" is shown at the size it reaches
    assert len(lines) == 2 and all(f" {unit}, seed 0: test {name} " in line for line in lines)
    page = (out / "report.html").read_text()
    assert "(higher is better)" in page and "accuracy" not in page.lower().replace("accuracy_vs_time", "")
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert {r[f"test_{metric}"] for r in headline(summary)["results"]} == {
        r[f"test_{metric}"] for r in rows.values()
    }


# --------------------------------------------------------------------------- --tta auto


class _Val:
    """Two-pixel-wide "images" [[a, b]]: the mirror image is [[b, a]]; flip averaging sees (a+b)/2."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, device):
        yield torch.arange(len(self)), self.x.to(device)


def _model(outputs: int) -> GraftModel:
    head = nn.Linear(2, outputs, bias=False)
    with torch.no_grad():  # output j reads feature j (the first one only, for one output)
        head.weight.copy_(torch.eye(2)[:outputs])
    return GraftModel(nn.Flatten(), head, mirror=lambda x: x.flip(3)).eval()


def _pairs(n: int = 120) -> torch.Tensor:
    return torch.randn(n, 1, 1, 2, generator=torch.Generator().manual_seed(0))


def _choose(task, model, x, labels, mode="auto"):
    val = _Val(x, labels)
    with torch.no_grad():  # as validation runs
        return choose_flip_tta(mode, model, val, model(val.x), task)


def test_tta_auto_keeps_flip_averaging_when_it_raises_validation_map_beyond_noise():
    x = _pairs()
    a, b = x[:, 0, 0, 0], x[:, 0, 0, 1]
    task = get_task("multi", ["p", "q"])
    helped = torch.stack([a + b > 0, a + b > 0], 1).float()  # what the average (a+b)/2 ranks perfectly
    model = _model(2)
    logits, record = _choose(task, model, x, helped)
    assert record["flip"] and model.flip_average and record["val_map"]["flip"] == pytest.approx(1.0)
    assert record["val_map"]["plain"] < 0.95 and "paired bootstrap" in record["reason"]
    with torch.no_grad():
        assert torch.equal(logits, model(x))  # the validation outputs are the flipped model's
    hurt = torch.stack([a - b > 0, b - a > 0], 1).float()  # what the average cannot see at all
    model = _model(2)
    _, record = _choose(task, model, x, hurt)
    assert (
        not record["flip"] and not model.flip_average and record["reason"].startswith("off: it did not raise")
    )


def test_tta_auto_leaves_a_gain_within_the_bootstrap_noise_off():
    """Labels unrelated to the inputs: one way or the other scores a little higher, by chance."""
    x = _pairs(60)
    labels = (torch.rand(60, 2, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    task = get_task("multi", ["p", "q"])
    _, record = _choose(task, _model(2), x, labels)
    assert not record["flip"]
    error = float(record["reason"].split("; standard error ")[1].split(",")[0])
    assert 0 < record["val_map"]["flip"] - record["val_map"]["plain"] <= error  # higher, within noise


def test_tta_auto_weighs_regression_by_validation_r2_and_flip_is_obeyed():
    x = _pairs()
    a, b = x[:, 0, 0, 0], x[:, 0, 0, 1]
    task = get_task("regression", ["y"], {"mean": [0.0], "std": [1.0]})
    model = _model(1)
    _, record = _choose(task, model, x, ((a + b) / 2)[:, None])
    assert record["flip"] and record["val_r2"]["flip"] == pytest.approx(1.0, abs=1e-5)
    assert "validation R2 by over one standard error" in record["reason"]
    model = _model(1)
    _, record = _choose(task, model, x, (a - b)[:, None])
    assert (
        not record["flip"] and not model.flip_average and record["val_r2"]["plain"] > record["val_r2"]["flip"]
    )
    model = _model(1)
    _, record = _choose(task, model, x, (a - b)[:, None], mode="flip")  # told: kept, with the evidence
    assert record["flip"] and model.flip_average and set(record["val_r2"]) == {"plain", "flip"}


# --------------------------------------------------------------------------- auto's headroom


def test_multi_label_headroom_is_mAP_against_its_per_label_standard_error():
    task = get_task("multi", ["a", "b"])
    per_label = {
        "a": {"average_precision": 0.9, "support": 100},
        "b": {"average_precision": 0.7, "support": 25},
    }
    headroom = task.headroom({"map": 0.8, "per_label": per_label}, 300)
    expected = np.sqrt(0.9 * 0.1 / 100 + 0.7 * 0.3 / 25) / 2  # the mean of two binomial-like APs
    assert headroom.gap == pytest.approx(0.2) and headroom.standard_error == pytest.approx(expected)
    assert strategies.has_headroom(headroom)[0]
    nearly = {
        "a": {"average_precision": 0.996, "support": 400},
        "b": {"average_precision": None, "support": 0},
    }
    assert not strategies.has_headroom(task.headroom({"map": 0.996, "per_label": nearly}, 800))[
        0
    ]  # within 1%
    few = {"a": {"average_precision": 0.9, "support": 4}}
    noisy = task.headroom({"map": 0.9, "per_label": few}, 10)  # 10% off, but 2 SE = 30% on 4 positives
    assert not strategies.has_headroom(noisy)[0]
    chosen, reason = strategies.choose_strategy(100, 10.0, None, 5, headroom=noisy, n_val=10)
    assert chosen == "linear" and reason.startswith(
        "the probe's validation 1 - mAP 10.0% on 10 examples is within"
    )


def test_regression_headroom_is_the_unexplained_variance_against_its_noise():
    task = get_task("regression", ["y"])
    assert strategies.has_headroom(task.headroom({"r2": 0.9}, 500))[0]
    assert not strategies.has_headroom(task.headroom({"r2": 0.995}, 500))[0]  # within the 1% floor
    small = task.headroom({"r2": 0.9}, 8)  # 2 x 0.1 x sqrt(2/8) = 0.1: the gap does not exceed it
    assert small.standard_error == pytest.approx(0.05) and not strategies.has_headroom(small)[0]
    chosen, reason = strategies.choose_strategy(100, 10.0, None, 5, headroom=task.headroom({"r2": 0.6}, 200))
    assert (
        chosen == "finetune" and "unexplained variance (1 - R2) 40.0%" in reason and "leaves room" in reason
    )


def test_auto_asks_the_task_for_the_probes_headroom(tmp_path, monkeypatch):
    """A regression run under `auto`: the probe's validation R2 reaches the rule as the task's gap."""
    from graft.cli import main

    seen = {}
    real = strategies.choose_strategy

    def spy(*args, **kwargs):
        seen.update(kwargs)
        seen["chosen"] = real(*args, **kwargs)
        return "linear", "kept by the test"  # no fine-tuning: the test needs the choice only

    monkeypatch.setattr(strategies, "choose_strategy", spy)
    data = write_image_table(tmp_path / "data", 45, 0)
    argv = ["train", str(data), "--label-column", "brightness", "--task", "regression", "--image-size", "32"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    headroom = seen["headroom"]
    assert headroom.what == "validation unexplained variance (1 - R2)"
    assert headroom.gap == pytest.approx(1 - report["validation"]["r2"], abs=1e-6)
    assert "unexplained variance" in seen["chosen"][1]


# --------------------------------------------------------------------------- torch-free task objects


def test_tasks_predict_from_outputs_without_importing_torch():
    """graft predict's torch-free path builds the task from a bundle: no task module imports torch
    until it trains or scores."""
    import subprocess

    code = (
        "import sys, numpy as np; from graft.tasks import get_task, task_names; "
        "rows = [get_task(n, ['a', 'b']).predictions(np.array([[0.2, 0.7]], np.float32), ['a', 'b']) "
        "for n in task_names()]; print(len(rows), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["3", "False"]
