"""Batch sizes for the device: a CPU keeps the modality's defaults; a GPU grows the fine-tuning
batch while epochs keep enough steps, with the square-root LR rule, and halves it until it fits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from graft.config import Plan, TrainConfig
from graft.modalities import get_modality
from graft.runner import with_defaults
from graft.tasks import get_task
from graft.training import sizing, timing

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object: no GPU is needed to plan for one


@pytest.mark.parametrize(
    ("n_train", "batch", "factor"),
    [(50_000, 256, 2.0), (20_000, 128, math.sqrt(2)), (12_799, 64, 1.0), (5_000, 64, 1.0)],
)
def test_a_gpu_grows_the_batch_while_an_epoch_keeps_100_steps(n_train, batch, factor):
    choice = sizing.device_batch(64, n_train, CUDA)
    assert (choice.batch_size, choice.lr_factor) == (batch, pytest.approx(factor))
    assert n_train // choice.batch_size >= sizing.MIN_STEPS_PER_EPOCH or batch == 64
    assert (choice.note is None) == (batch == 64)


def test_a_cpu_keeps_the_default_batch_and_inference_batches_grow_on_a_gpu_only():
    assert sizing.device_batch(64, 1_000_000, CPU) == sizing.BatchChoice(64, 1.0)
    assert sizing.inference_batch(CPU, 64) == 64 and sizing.inference_batch(CUDA, 64) == 256


def _plan(strategy: str = "finetune") -> Plan:
    return Plan("image", "b", strategy, "", 0, 0, 0.0, 0, "cuda", "bf16", "", {})


def test_the_plan_takes_the_device_batch_and_the_lr_rule_only_for_what_the_user_left_unset():
    image = get_modality("image")
    default = image.defaults.strategies["finetune"]
    plan = with_defaults(_plan(), TrainConfig(data="d"), image, 50_000, CUDA)
    assert (plan.batch_size, plan.lr) == (4 * default.batch_size, pytest.approx(2 * default.lr))
    assert any("square-root rule" in note for note in plan.notes)
    plan = with_defaults(_plan(), TrainConfig(data="d", lr=0.01), image, 50_000, CUDA)
    assert (plan.batch_size, plan.lr) == (4 * default.batch_size, 0.01)  # the user's LR as given
    plan = with_defaults(_plan(), TrainConfig(data="d", batch_size=32), image, 50_000, CUDA)
    assert (plan.batch_size, plan.lr, plan.notes) == (32, default.lr, ())
    plan = with_defaults(_plan(), TrainConfig(data="d"), image, 50_000, CPU)
    assert (plan.batch_size, plan.lr, plan.notes) == (default.batch_size, default.lr, ())
    plan = with_defaults(_plan("linear"), TrainConfig(data="d"), image, 50_000, CUDA)
    assert plan.batch_size == image.defaults.strategies["linear"].batch_size


def _fits_up_to(limit: int, tried: list[int]):
    def step(batch: int) -> None:
        tried.append(batch)
        if batch > limit:
            raise torch.OutOfMemoryError("CUDA out of memory")

    return step


def test_out_of_memory_halves_the_batch_down_to_the_default_and_no_further():
    tried: list[int] = []
    assert sizing.largest_fitting(_fits_up_to(100, tried), 256, 64) == 64 and tried == [256, 128, 64]
    assert sizing.largest_fitting(_fits_up_to(1000, []), 256, 64) == 256
    with pytest.raises(torch.OutOfMemoryError):
        sizing.largest_fitting(_fits_up_to(10, []), 256, 64)


def test_a_halved_batch_takes_the_lr_back_down_and_says_so(monkeypatch):
    image = get_modality("image")
    default = image.defaults.strategies["finetune"]
    plan = with_defaults(_plan(), TrainConfig(data="d"), image, 50_000, CUDA)
    lines: list[str] = []
    config = TrainConfig(data="d")
    task = get_task("single", ["a", "b"])
    job = SimpleNamespace(config=config, plan=plan, modality=image, device=CUDA, log=lines.append, task=task)
    train_set = SimpleNamespace(timing_batches=lambda batch, device, count: [batch] * count)

    def time_steps(model, groups, batches, cfg, loss_fn=None):
        if batches[0] > 128:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 0.1

    monkeypatch.setattr(timing, "time_steps", time_steps)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    plan = timing.fit_batch_to_memory(job, None, [], train_set)
    assert plan.batch_size == 128 and plan.lr == pytest.approx(default.lr * math.sqrt(2))
    assert plan.notes[-1].startswith("batch 128: 256 did not fit") and lines == [plan.notes[-1]]


def test_fine_tuning_trains_with_the_batch_the_memory_fallback_chose(tmp_path, monkeypatch):
    """The plan is frozen: `fit_batch_to_memory` returns a new plan, and fine-tuning must train
    with that one (its batch and LR), not the plan it started with."""
    from dataclasses import replace

    from conftest import make_image_folder

    from graft.runner import run

    def smaller(job, model, groups, train_set):
        return replace(job.plan, batch_size=4, lr=job.plan.lr / 2).with_note("batch 4: did not fit")

    monkeypatch.setattr(timing, "fit_batch_to_memory", smaller)
    data = make_image_folder(tmp_path / "data", per_class=8, seed=0)
    config = TrainConfig(data=str(data), strategy="finetune", epochs=1, image_size=32, val_fraction=0.25,
                         out=str(tmp_path / "run"))  # fmt: skip
    lines: list[str] = []
    result = run(config, log=lines.append)
    plan = result.report["plan"]
    assert plan["batch_size"] == 4 and "batch 4: did not fit" in plan["notes"]
    # 18 training images in full batches of 4 (the default batch, 64, would make one step)
    assert any(line.startswith("fine-tuning: 1 epoch(s) of 4 steps") for line in lines), "\n".join(lines)
