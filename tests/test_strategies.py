"""graft.training.strategies (which groups train, at what LR) and the schedule of graft.training.loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from graft.training import loop as train
from graft.training.loop import LoopConfig, fit, one_cycle
from graft.training.strategies import (
    HEAD,
    Stage,
    auto_epochs,
    choose_strategy,
    discriminative_mults,
    feature_layers_kept,
    make_strategy,
)

GROUPS = ("stem", "blocks.0", "blocks.1", "blocks.2")


def test_linear_trains_only_the_head():
    """linear: every epoch, the head alone trains, at the full LR."""
    strategy = make_strategy("linear", GROUPS)
    for epoch in range(5):
        stage = strategy(epoch)
        assert stage.lr_mults == {HEAD: 1.0}
        assert not any(stage.trains(g) for g in GROUPS)


def test_finetune_freezes_the_body_then_trains_everything_discriminatively():
    """finetune: head only for freeze_epochs, then all groups, head 1.0 down to 1/lr_mult at the stem."""
    strategy = make_strategy("finetune", GROUPS, freeze_epochs=2, lr_mult=100.0)
    assert strategy(0).lr_mults == strategy(1).lr_mults == {HEAD: 1.0}
    mults = strategy(2).lr_mults
    assert strategy(7).lr_mults == mults
    assert list(mults) == [*GROUPS, HEAD]
    assert mults[HEAD] == pytest.approx(1.0)
    assert mults["stem"] == pytest.approx(1 / 100)
    values = list(mults.values())
    ratios = [b / a for a, b in zip(values, values[1:], strict=False)]
    assert ratios == pytest.approx([100 ** (1 / len(GROUPS))] * len(GROUPS))  # geometric
    assert all(r > 1 for r in ratios)  # later groups learn faster


def test_finetune_defaults_one_frozen_epoch_and_factor_ten():
    """finetune's defaults: one frozen epoch, then the stem at a tenth of the head's LR."""
    strategy = make_strategy("finetune", GROUPS)
    assert strategy(0).lr_mults == {HEAD: 1.0}
    assert strategy(1).lr_mults["stem"] == pytest.approx(0.1)


def test_gradual_unfreezes_one_group_per_epoch_from_the_top():
    """gradual: epoch k trains the head and the top k groups, with finetune's multipliers."""
    strategy = make_strategy("gradual", GROUPS, lr_mult=10.0)
    full = discriminative_mults(GROUPS, 10.0)
    assert set(strategy(0).lr_mults) == {HEAD}
    assert set(strategy(1).lr_mults) == {HEAD, "blocks.2"}
    assert set(strategy(2).lr_mults) == {HEAD, "blocks.2", "blocks.1"}
    assert set(strategy(3).lr_mults) == {HEAD, "blocks.2", "blocks.1", "blocks.0"}
    assert strategy(4).lr_mults == full
    assert strategy(9).lr_mults == full  # nothing left to unfreeze
    for epoch in range(6):
        assert all(m == pytest.approx(full[g]) for g, m in strategy(epoch).lr_mults.items())


def test_discriminative_mults_without_groups():
    """A backbone without groups leaves just the head at 1."""
    assert discriminative_mults([], 10.0) == {HEAD: 1.0}


@pytest.mark.parametrize("name", ["sgd", "", "Linear"])
def test_unknown_strategy(name):
    """An unknown strategy name is a ValueError that lists the valid ones."""
    with pytest.raises(ValueError, match="linear, finetune, gradual"):
        make_strategy(name, GROUPS)


def test_one_cycle_shape():
    """one_cycle starts low, rises to 1 at pct_start, then falls to ~0 at the end."""
    pct = 0.3
    xs = [i / 100 for i in range(101)]
    ys = [one_cycle(x, pct) for x in xs]
    assert ys[0] < 0.05
    assert one_cycle(pct, pct) == pytest.approx(1.0)
    assert max(ys) == pytest.approx(1.0)
    assert ys[xs.index(pct)] == max(ys)
    assert ys[-1] < 1e-3
    warm, cool = ys[: xs.index(pct) + 1], ys[xs.index(pct) :]
    assert all(a < b for a, b in zip(warm, warm[1:], strict=False))
    assert all(a > b for a, b in zip(cool, cool[1:], strict=False))
    assert one_cycle(-1.0, pct) == ys[0] and one_cycle(2.0, pct) == ys[-1]  # clamped
    assert all(0 < y <= 1 for y in ys)
    assert not any(math.isnan(y) for y in ys)


# --------------------------------------------------------------------------- the loop applies stages


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    groups = [
        ("stem", list(model[0].parameters())),
        ("blocks.0", list(model[2].parameters())),
        (HEAD, list(model[4].parameters())),
    ]
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(32) % 3

    def batches(epoch):
        for i in range(0, 32, 8):
            yield x[i : i + 8], y[i : i + 8]

    return model, groups, batches


def _snapshot(groups):
    return {name: [p.detach().clone() for p in params] for name, params in groups}


def _changed(before, groups):
    return {
        name: any(not torch.equal(a, p) for a, p in zip(before[name], params, strict=True))
        for name, params in groups
    }


def _fit(model, groups, batches, strategy, epochs):
    return fit(model, groups, strategy, batches, 4, LoopConfig(epochs=epochs, lr=1e-2))


def test_fit_with_linear_leaves_the_body_untouched():
    """Under `linear`, the loop updates the head's weights and not a single body weight."""
    model, groups, batches = _toy()
    before = _snapshot(groups)
    history = _fit(model, groups, batches, make_strategy("linear", ["stem", "blocks.0"]), epochs=2)
    assert len(history) == 2
    assert _changed(before, groups) == {"stem": False, "blocks.0": False, HEAD: True}


def test_fit_with_finetune_trains_the_body_after_the_frozen_epoch():
    """finetune with freeze_epochs=1: the body is frozen in epoch 1 and trains from epoch 2 on."""
    model, groups, batches = _toy()
    strategy = make_strategy("finetune", ["stem", "blocks.0"], freeze_epochs=1)
    before = _snapshot(groups)
    _fit(model, groups, batches, strategy, epochs=1)
    assert _changed(before, groups) == {"stem": False, "blocks.0": False, HEAD: True}
    model, groups, batches = _toy()
    _fit(model, groups, batches, strategy, epochs=2)
    assert _changed(before, groups) == {"stem": True, "blocks.0": True, HEAD: True}


def test_fit_sets_each_groups_lr_from_the_stage(monkeypatch):
    """The optimizer's per-group LRs are lr * one_cycle * the stage's multiplier (0 when frozen)."""
    made = []
    original = train.make_optimizer

    def spy(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(train, "make_optimizer", spy)
    mults = {"stem": 0.25, HEAD: 1.0}
    model, groups, batches = _toy()
    _fit(model, groups, batches, lambda epoch: Stage(mults), epochs=1)
    lrs = {}
    for group in made[0].param_groups:
        lrs.setdefault(group["name"], set()).add(group["lr"])
    assert all(len(v) == 1 for v in lrs.values())  # decay / no-decay halves of a group agree
    lr = {name: v.pop() for name, v in lrs.items()}
    assert lr["blocks.0"] == 0.0
    assert lr[HEAD] > 0
    assert lr["stem"] == pytest.approx(0.25 * lr[HEAD])
    last_step = 3 / 4  # 4 steps: the LR of the last one
    assert lr[HEAD] == pytest.approx(1e-2 * one_cycle(last_step, LoopConfig().pct_start))


def test_auto_needs_enough_examples_per_class() -> None:
    chosen, reason = choose_strategy(10, 1.0, None)
    assert chosen == "linear" and "10 examples per class" in reason


def test_auto_fine_tunes_when_the_epochs_fit_the_budget() -> None:
    assert choose_strategy(100, 100.0, None, epochs=5)[0] == "finetune"  # 500 s of 900
    chosen, reason = choose_strategy(100, 200.0, None, epochs=5)  # 1000 s > the 15-minute default
    assert chosen == "linear" and "900s budget" in reason
    assert choose_strategy(100, 200.0, 1800, epochs=5)[0] == "finetune"


def test_auto_epochs_one_pass_is_enough_on_large_data() -> None:
    assert auto_epochs(500, 5) == 5  # small data: the default epochs
    assert auto_epochs(5_000, 3) == 3
    assert auto_epochs(8_000, 5) == 3  # 3 passes see >= 20k examples
    assert auto_epochs(67_000, 3) == 1


def test_more_feature_layers_are_kept_only_above_the_fewest_by_more_than_the_noise() -> None:
    assert feature_layers_kept({1: 0.80, 4: 0.90}, noise=0.02) == 4
    assert feature_layers_kept({1: 0.80, 4: 0.81}, noise=0.02) == 1  # a win inside the noise
    assert feature_layers_kept({1: 0.80, 4: 0.82}, noise=0.025) == 1
    assert feature_layers_kept({1: 0.90, 4: 0.80}, noise=0.0) == 1
    assert feature_layers_kept({1: 0.5, 2: 0.7, 4: 0.7}, noise=0.1) == 2  # ties go to fewer layers
