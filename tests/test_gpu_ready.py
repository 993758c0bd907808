"""What a first CUDA run relies on, checked on the CPU: no host waits per training step, the CUDA
switches set and restored, and the CUDA-only choices (precision, fused AdamW, loss scaling), asked of
the one device-capabilities seam with an H100's recorded capabilities (tests/fixtures)."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import graft
from graft.backbones import Preprocessing
from graft.data import pipeline
from graft.data.pipeline import normalize
from graft.distributed import ddp, launcher, ranks
from graft.errors import ConfigError
from graft.runtime import device as device_module
from graft.runtime import inference
from graft.runtime.capabilities import CudaCapabilities, cuda_capabilities, use_capabilities
from graft.runtime.device import ahead, cuda_tuning, no_host_waits, resolve_device
from graft.runtime.inference import forward_all
from graft.runtime.precision import Precision, resolve_precision, use_precision
from graft.training.callbacks import Checkpoint, Deadline, EpochLog, ProgressBar
from graft.training.checkpoint import Checkpointer
from graft.training.loop import (
    Callback,
    LoopConfig,
    Schedule,
    clock_schedule,
    fit,
    make_optimizer,
    step_schedule,
)
from graft.training.sizing import largest_fitting
from graft.training.strategies import HEAD, Stage
from graft.training.trackers import TrackSteps

GRAFT_SRC = str(Path(graft.__file__).parent)
CUDA = torch.device("cuda")
H100 = CudaCapabilities.from_json(Path(__file__).parent / "fixtures" / "h100_capabilities.json")
T4 = dataclasses.replace(H100, name="Tesla T4", capability=(7, 5), total_memory=15_835_660_288)


class _Recorded(CudaCapabilities):
    """A recorded GPU that counts the allocator-cache releases graft asks for (no CUDA to empty)."""

    emptied: list[int]

    def _release(self) -> None:
        self.emptied.append(1)


def _recording(base: CudaCapabilities) -> _Recorded:
    fake = _Recorded(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    object.__setattr__(fake, "emptied", [])
    return fake


def _spy_reads(set_attr: Callable[[object, str, object], None]) -> Counter:
    """Counts graft's own reads of tensors back to the host and its host-to-device constants:
    torch.tensor(..., device=...), Tensor.item, float(tensor), Tensor.tolist, Tensor.cpu,
    torch.cuda.synchronize, indexing by a boolean mask."""
    counts: Counter = Counter()

    def from_graft() -> bool:
        return sys._getframe(2).f_code.co_filename.startswith(GRAFT_SRC)

    real_tensor = torch.tensor

    def tensor(*args, **kwargs):
        if kwargs.get("device") is not None and from_graft():
            counts["torch.tensor(device=)"] += 1
        return real_tensor(*args, **kwargs)

    set_attr(torch, "tensor", tensor)
    for name in ("item", "tolist", "__float__", "cpu"):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            if from_graft():
                counts[_name] += 1
            return _real(self, *args, **kwargs)

        set_attr(torch.Tensor, name, spy)
    set_attr(torch.cuda, "synchronize", lambda *a, **k: counts.update(["synchronize"]))
    real_getitem = torch.Tensor.__getitem__

    def getitem(self, index):  # a boolean mask's result has a size the host must read first
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool and from_graft():
            counts["tensor[mask]"] += 1
        return real_getitem(self, index)

    set_attr(torch.Tensor, "__getitem__", getitem)
    return counts


class _Tracking:
    def __init__(self) -> None:
        self.records: list = []

    def log(self, records: list) -> None:
        self.records += records


class _LRs(Callback):
    def __init__(self) -> None:
        self.taken: list[float] = []

    def on_step_end(self, loop, loss):
        self.taken.append(loop.optimizer.param_groups[0]["lr"])


def _image_epoch(
    tmp_path: Path, steps: int, data_parallel: bool = False, schedule: Schedule = step_schedule
) -> list[float]:
    """One real epoch of `fit` on uint8 images normalised per batch, with fine-tuning's per-step
    callbacks (the deadline, the progress bar, the epoch log, the trackers, the checkpoint);
    returns the LR of each step."""
    torch.manual_seed(0)
    pipeline._CONSTANTS.clear()  # each run builds its constants once, as a fresh process does
    prep = Preprocessing(input_size=8)
    images = torch.randint(0, 255, (steps, 4, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 2, (steps, 4))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def batches(epoch: int):
        for x, y in zip(images, labels, strict=True):
            yield normalize(x, prep), y

    callbacks = [
        Deadline(time.perf_counter() + 3600),
        ProgressBar("fine-tuning", steps),
        EpochLog(lambda line: None, 1),
        TrackSteps(_Tracking(), "finetune"),
        Checkpoint(Checkpointer(tmp_path / f"run{steps}", {}, resume=False)),
        lrs := _LRs(),
    ]
    groups = [(HEAD, list(model.parameters()))]
    stage = Stage({HEAD: 1.0})
    cfg = LoopConfig(epochs=1)
    fit(
        model, groups, lambda e: stage, batches, steps, cfg,
        callbacks=callbacks, data_parallel=data_parallel, schedule=schedule,
    )
    return lrs.taken


def test_a_training_epoch_reads_nothing_back_per_step(tmp_path, monkeypatch):
    """The same reads for an epoch of 3 steps and of 12: none per step (the epoch's end reads the
    summed loss once; the trackers read every 100 steps)."""
    counts = _spy_reads(monkeypatch.setattr)
    _image_epoch(tmp_path, 3)
    short = Counter(counts)
    counts.clear()
    _image_epoch(tmp_path, 12)
    assert counts == short, f"3 steps: {dict(short)}, 12 steps: {dict(counts)}"
    saved = short.pop("cpu", 0)  # the checkpoint copies weights and optimizer state at the end
    assert saved <= 16 and sum(short.values()) <= 4, dict(short)


def test_language_model_adaptation_reads_nothing_back_per_step(monkeypatch):
    """--adapt-lm's masked-LM epochs: the same reads for 2 steps and for 5 (the masked positions
    are found on the CPU where batches are made, not by a mask on the device)."""
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    from graft.backbones import create_backbone
    from graft.training.adapt_lm import adapt_language_model

    backbone = create_backbone("minilm")
    texts = [f"question {k} asks about" + " places and dates" * (k % 5) for k in range(20)]
    counts = _spy_reads(monkeypatch.setattr)
    adapt_language_model(backbone, texts[:8], 1, 16, batch_size=4, log=lambda line: None)
    short = Counter(counts)
    counts.clear()
    adapt_language_model(backbone, texts, 1, 16, batch_size=4, log=lambda line: None)
    assert counts == short, f"2 steps: {dict(short)}, 5 steps: {dict(counts)}"


def test_a_forward_over_batches_copies_its_outputs_to_the_cpu_once_per_chunk(monkeypatch):
    """Extraction, evaluation and prediction (`forward_all`): the outputs stay on the device and
    come back in one copy (one wait) per CHUNK_BYTES, in input order whatever the batch order."""
    torch.manual_seed(0)
    model, data = nn.Linear(4, 3), torch.randn(48, 4)

    def batches(count: int):  # batches of 4 rows, last first
        for k in reversed(range(count)):
            index = torch.arange(4 * k, 4 * k + 4)
            yield index, data[index]

    counts = _spy_reads(monkeypatch.setattr)
    forward_all(model, batches(3), 12)
    short = Counter(counts)
    counts.clear()
    out = forward_all(model, batches(12), 48)
    assert counts == short and short["cpu"] == 1, f"3 batches: {dict(short)}, 12: {dict(counts)}"
    torch.testing.assert_close(out, model(data).detach())
    monkeypatch.setattr(inference, "CHUNK_BYTES", 5 * 4 * 3 * 4)  # five batches' float32 rows
    counts.clear()
    assert torch.equal(forward_all(model, batches(12), 48), out)
    assert counts["cpu"] == 3  # after 5 batches, 10, and the last 2


def test_image_feature_extraction_copies_features_back_once(tmp_path, monkeypatch):
    """Frozen-feature extraction: the same reads for 3 batches and for 12 (the features come back
    in one copy per chunk, not one per batch)."""
    from PIL import Image

    from graft.backbones import create_backbone
    from graft.modalities import get_modality

    backbone = create_backbone("efficientnet_lite0")
    prep = Preprocessing(input_size=32)
    paths = []
    for k in range(24):
        paths.append(tmp_path / f"{k:02d}.png")
        Image.new("RGB", (40, 36), (10 * k, 255 - 10 * k, 128)).save(paths[-1])
    image = get_modality("image")
    counts = _spy_reads(monkeypatch.setattr)
    kwargs = {"flip": False, "batch_size": 2, "desc": "features", "engine": "torch"}
    pipeline._CONSTANTS.clear()  # built once per process: in each call here, as in a fresh one
    image.encode(backbone, prep, paths[:6], **kwargs)
    short = Counter(counts)
    counts.clear()
    pipeline._CONSTANTS.clear()
    features = image.encode(backbone, prep, paths, **kwargs)
    assert counts == short, f"3 batches: {dict(short)}, 12: {dict(counts)}"
    assert features.ok.all() and features.values.shape == (24, backbone.num_features)
    assert np.abs(features.values[0] - features.values[-1]).max() > 0


def _two_process_epochs(log: Callable[[str], None], tmp: str) -> dict[str, Any]:
    """In each of two gloo processes: the reads of a 3-step and a 24-step data-parallel epoch, on
    the step schedule and on a time budget's clock; every process's LRs on the clock."""
    ranks.setup(torch.device("cpu"))
    counts = _spy_reads(setattr)
    seen: dict[str, Any] = {}
    schedules = {"steps": lambda: step_schedule, "clock": lambda: clock_schedule(time.perf_counter() + 3)}
    for name, schedule in schedules.items():
        for steps in (3, 24):
            counts.clear()
            lrs = _image_epoch(Path(tmp) / f"{ranks.rank()}{name}", steps, True, schedule())
            seen[f"{name} {steps}"] = dict(counts)
    seen["lrs"] = ranks.gather_objects(lrs)
    return seen


@pytest.mark.slow  # ~10 s of process start-up
def test_two_processes_agree_at_intervals_not_every_step(tmp_path):
    """Under --devices N the processes agree on stopping every AGREE_EVERY steps and at the
    epoch's end; neither a step-count schedule nor a time budget's clock agrees on the LR per
    step (the clock is rank 0's, read when they agree), and every process takes the same LRs."""
    assert ddp.AGREE_EVERY > 24
    seen = launcher.launch(_two_process_epochs, (str(tmp_path),), 2, torch.device("cpu"))
    assert seen["steps 3"] == seen["steps 24"], seen
    assert seen["clock 3"] == seen["clock 24"], seen
    first, second = seen["lrs"]
    assert len(first) == 24 and first == second
    assert first[-1] < first[0]  # annealing towards the deadline on the clock


def test_sync_debug_raises_at_host_waits_in_a_cuda_epoch_only_when_asked(monkeypatch):
    modes: list[str | int] = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with no_host_waits(CUDA):
        pass
    assert modes == []  # not asked
    monkeypatch.setenv("GRAFT_SYNC_DEBUG", "1")
    with no_host_waits(torch.device("cpu")):
        pass
    assert modes == []  # not on CUDA
    with no_host_waits(CUDA), device_module.host_waits_allowed():  # a documented wait lifts it
        pass
    assert modes == ["error", "default", 0, 0]


@pytest.fixture
def cuda_flags():
    """PyTorch's global switches, restored after the test (they are not plain attributes)."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("tf32", [True, False])
def test_cuda_tuning_sets_benchmark_and_tf32_then_restores_them(cuda_flags, tf32):
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = False, not tf32
    with cuda_tuning(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark is False
    with cuda_tuning(CUDA, tf32=tf32):
        assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cuda.matmul.allow_tf32 is (not tf32)


def test_the_recorded_h100_is_what_the_seam_reports_and_a_cpu_machine_has_none():
    assert (H100.name, H100.capability, H100.bf16_native, H100.total_memory // 2**30) == (
        "NVIDIA H100 80GB HBM3", (9, 0), True, 79)
    assert CudaCapabilities.from_dict(H100.to_dict()) == H100
    with use_capabilities(H100):
        assert cuda_capabilities() is H100
        assert resolve_device("auto") == CUDA and resolve_device("cuda:0") == torch.device("cuda:0")
        assert launcher.available(CUDA) == (1, "CUDA GPU(s)")
        with pytest.raises(ConfigError, match="has 1 CUDA GPU"):
            resolve_device("cuda:1")
    with use_capabilities(CudaCapabilities(available=False)):
        assert resolve_device("auto") == torch.device("cpu") and not cuda_capabilities().bf16_native


def test_auto_precision_is_bf16_on_ampere_and_later_and_fp16_before():
    with use_capabilities(H100):
        assert resolve_precision("auto", CUDA).name == "bf16"
        assert resolve_precision("fp16", CUDA).name == "fp16"
        assert resolve_precision("bf16", CUDA).name == "bf16"
    with use_capabilities(T4):
        assert resolve_precision("auto", CUDA).name == "fp16"  # bf16 is only emulated there
        assert resolve_precision("fp32", CUDA).name == "fp32"
        with pytest.raises(ConfigError, match="no bf16"):
            resolve_precision("bf16", CUDA)


def test_fused_adamw_only_on_cuda(monkeypatch):
    made: list[dict] = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            made.append(kwargs)
            super().__init__(params, **{k: v for k, v in kwargs.items() if k != "fused"})

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    groups = [(HEAD, list(nn.Linear(4, 2).parameters()))]
    make_optimizer(groups, LoopConfig(), torch.device("cpu"))
    make_optimizer(groups, LoopConfig(), CUDA)
    assert [m.get("fused") for m in made] == [None, True]


def test_out_of_memory_halves_the_batch_and_empties_the_cache():
    def try_step(batch: int) -> None:
        if batch > 64:
            raise torch.OutOfMemoryError(f"CUDA out of memory at batch {batch}")

    with use_capabilities(_recording(H100)) as gpu:
        assert largest_fitting(try_step, 256, 32) == 64
    assert len(gpu.emptied) == 2  # after 256 and after 128 ran out
    with use_capabilities(_recording(CudaCapabilities(available=False))) as cpu_only:
        assert largest_fitting(try_step, 256, 32) == 64
    assert cpu_only.emptied == []  # no GPU: nothing to empty


class _Capture(Callback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after, self.scaling = stop_after, {}

    def on_epoch_end(self, loop, row):
        loop.stop = loop.stop or row["epoch"] == self.stop_after

    def on_fit_end(self, loop):
        self.scaling = loop.scaler.state_dict()


def _fp16_run(run_dir: Path, resume: bool, stop_after: int | None = None) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    capture = _Capture(stop_after)
    callbacks = [Checkpoint(Checkpointer(run_dir, {}, resume=resume)), capture]
    groups = [(HEAD, list(model.parameters()))]
    stage = Stage({HEAD: 1.0})
    with use_precision(Precision("fp16", "loss scaling, tested on the CPU")):
        fit(model, groups, lambda e: stage, lambda e: data, 3, LoopConfig(epochs=2), callbacks=callbacks)
    return model, capture.scaling


def test_an_fp16_resume_restores_the_loss_scaler_and_ends_with_the_same_weights(tmp_path):
    whole, whole_scaling = _fp16_run(tmp_path / "whole", resume=False)
    _fp16_run(tmp_path / "cut", resume=False, stop_after=1)
    resumed, resumed_scaling = _fp16_run(tmp_path / "cut", resume=True)
    assert whole_scaling and resumed_scaling == whole_scaling
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_extraction_batches_are_pinned_only_for_a_cuda_device(monkeypatch):
    made: list[bool] = []
    real = pipeline.DataLoader

    def loader(*args, **kwargs):
        made.append(kwargs["pin_memory"])
        return real(*args, **{**kwargs, "pin_memory": False})  # no CUDA here to pin for

    monkeypatch.setattr(pipeline, "DataLoader", loader)
    sources = [np.zeros((8, 8, 3), dtype=np.uint8)] * 3
    list(pipeline.iterate_batches(sources, Preprocessing(input_size=8), workers=0))
    list(pipeline.iterate_batches(sources, Preprocessing(input_size=8), workers=0, pin=True))
    assert made == [False, True]
    pinned: list[int] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(1) or self)
    batch = pipeline.Batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1), [(1, "bad")])
    assert batch.pin_memory().failures == [(1, "bad")] and len(pinned) == 2


def test_batches_are_read_one_ahead_of_the_computation():
    read: list[int] = []

    def batches():
        for k in range(3):
            read.append(k)
            yield k

    seen = []
    for k in ahead(batches()):
        seen.append((k, list(read)))
    assert seen == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2])]


def test_evaluation_and_prediction_keep_tf32_as_the_caller_has_it(cuda_flags):
    for outside in (False, True):  # prediction (PyTorch's default), evaluation inside training
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = False, outside
        with cuda_tuning(CUDA, tf32=None):
            assert torch.backends.cudnn.benchmark is True
            assert torch.backends.cuda.matmul.allow_tf32 is outside
        assert torch.backends.cudnn.benchmark is False
