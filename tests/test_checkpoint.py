"""graft.training.checkpoint: per-epoch checkpoints (safetensors + JSON, no pickle) and their restore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from graft.training.checkpoint import META, TENSORS, Checkpointer
from graft.training.loop import LoopConfig, LoopState, make_optimizer

CONFIG = {"strategy": "finetune", "lr": 0.001, "epochs": 3}


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)]
    return nn.Sequential(*layers)


def _optimizer(model: nn.Sequential) -> torch.optim.AdamW:
    """AdamW with graft's named groups (decay / no-decay split), as `fit` builds it."""
    groups = [("stem", list(model[:2].parameters())), ("head", list(model[4].parameters()))]
    return make_optimizer(groups, LoopConfig(lr=0.01))


def _train(model: nn.Sequential, optimizer: torch.optim.Optimizer, steps: int) -> None:
    model.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(5, 3, 8, 8, generator=gen), torch.randint(0, 3, (5,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture
def saved(tmp_path: Path):
    """A model and AdamW after 3 steps, checkpointed in tmp_path/run as epoch 2, step 3."""
    model = _model(0)
    optimizer = _optimizer(model)
    _train(model, optimizer, 3)
    history = [{"epoch": 1, "train_loss": 1.25}, {"epoch": 2, "train_loss": 0.5}]
    state = LoopState(epoch=2, step=3, history=history)
    run_dir = tmp_path / "run"
    Checkpointer(run_dir, CONFIG, resume=False).save(model, optimizer, state)
    return run_dir, model, optimizer, state


def test_round_trip_restores_model_optimizer_and_loop_state(saved):
    """Restoring into a fresh model + AdamW gives identical tensors, Adam moments and LoopState."""
    run_dir, model, optimizer, state = saved
    fresh = _model(1)  # other initial weights: everything must come from the checkpoint
    fresh_opt = _optimizer(fresh)
    assert not torch.equal(fresh[0].weight, model[0].weight)

    restored = Checkpointer(run_dir, dict(CONFIG), resume=True).restore(fresh, fresh_opt)

    assert restored == state
    assert fresh.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key  # BN running stats included
    want, got = optimizer.state_dict(), fresh_opt.state_dict()
    assert got["state"].keys() == want["state"].keys() and want["state"]
    for idx, slots in want["state"].items():
        assert set(got["state"][idx]) == set(slots) >= {"exp_avg", "exp_avg_sq", "step"}
        for key, value in slots.items():
            assert torch.equal(got["state"][idx][key], value), (idx, key)
    for g_want, g_got in zip(want["param_groups"], got["param_groups"], strict=True):
        assert g_got["name"] == g_want["name"]
        assert g_got["weight_decay"] == g_want["weight_decay"]
        assert tuple(g_got["betas"]) == tuple(g_want["betas"])
        assert g_got["params"] == g_want["params"]


def test_restored_optimizer_continues_exactly_like_the_original(saved):
    """One more step after restore lands on the same weights as one more step on the original."""
    run_dir, model, optimizer, _ = saved
    fresh = _model(1)
    fresh_opt = _optimizer(fresh)
    Checkpointer(run_dir, CONFIG, resume=True).restore(fresh, fresh_opt)
    _train(model, optimizer, 1)
    _train(fresh, fresh_opt, 1)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_only_safetensors_and_json_are_written(saved):
    """The run folder holds checkpoint.safetensors + plain checkpoint.json: no .pt/.pkl, no temp files."""
    run_dir, *_ = saved
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([TENSORS, META])
    assert not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("*.pkl"))
    meta = json.loads((run_dir / META).read_text())
    assert (meta["epoch"], meta["step"], meta["config"]) == (2, 3, CONFIG)
    from safetensors import safe_open

    with safe_open(str(run_dir / TENSORS), framework="pt") as f:
        assert f.metadata()["step"] == "3"
        assert any(k.startswith("optim.") for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
        assert any(k.startswith("model.") for k in f.keys())  # noqa: SIM118 (safe_open is no dict)


def test_a_torn_save_resumes_from_the_tensors_own_state(saved):
    """Killed between the two writes, checkpoint.json lags behind the tensors: the tensors carry
    their own state (safetensors metadata), so the restore is consistent at the tensors' step."""
    run_dir, _, _, state = saved
    meta = json.loads((run_dir / META).read_text())
    (run_dir / META).write_text(json.dumps(meta | {"epoch": 1, "step": 1, "history": state.history[:1]}))
    fresh = _model(1)
    assert Checkpointer(run_dir, CONFIG, resume=True).restore(fresh, _optimizer(fresh)) == state
    assert json.loads((run_dir / META).read_text()) == meta  # the readable copy caught up


def test_step_disagreeing_with_tensor_metadata_is_refused_in_an_older_checkpoint(saved):
    """A checkpoint written before the tensors carried their state: a torn save raises ValueError."""
    from safetensors.torch import load_file, save_file

    run_dir, *_ = saved
    save_file(load_file(str(run_dir / TENSORS)), str(run_dir / TENSORS), metadata={"step": "3"})
    meta = json.loads((run_dir / META).read_text())
    meta["step"] = 4
    (run_dir / META).write_text(json.dumps(meta))
    fresh = _model(1)
    with pytest.raises(ValueError, match="disagree"):
        Checkpointer(run_dir, CONFIG, resume=True).restore(fresh, _optimizer(fresh))


def test_changed_settings_are_refused_by_name(saved):
    """Restoring with a different config raises ValueError naming the changed key, not the others."""
    run_dir, *_ = saved
    fresh = _model(1)
    with pytest.raises(ValueError, match=r"\(lr\)"):
        Checkpointer(run_dir, CONFIG | {"lr": 0.01}, resume=True).restore(fresh, _optimizer(fresh))


def test_without_resume_or_checkpoint_training_starts_fresh(saved, tmp_path):
    """resume=False ignores an existing checkpoint; resume=True with none starts at epoch 0."""
    run_dir, *_ = saved
    fresh = _model(1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert Checkpointer(run_dir, CONFIG, resume=False).restore(fresh, _optimizer(fresh)) == LoopState()
    empty = Checkpointer(tmp_path / "empty", CONFIG, resume=True)
    assert empty.restore(fresh, _optimizer(fresh)) == LoopState()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())
