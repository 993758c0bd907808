"""Several processes, one run (graft.distributed, on Hugging Face Accelerate): 2 CPU processes on a
tiny folder see disjoint parts of the single-process batches, write one bundle, match a single
process's run and leave a feature cache it reuses; impossible --devices, a port in use and a dying
or hanging process are one-line errors, never a hang."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_image_folder
from safetensors.torch import load_file

from graft.cli import main
from graft.config import TrainConfig
from graft.distributed import ddp, launcher, ranks, shards
from graft.errors import ConfigError, DataError, DistributedError
from graft.runner import _run_process, run

pytest.importorskip("accelerate")

CPU = torch.device("cpu")


def _config(data: Path, out: Path, **kw: Any) -> TrainConfig:
    base = {
        "data": str(data / "train"),
        "val": str(data / "val"),
        "strategy": "finetune",
        "epochs": 2,  # after the probe (the head-only epoch), 2 fine-tuning epochs
        "image_size": 32,
        "batch_size": 8,
        "augment": "none",
        "out": str(out),
        "device": "cpu",
    }
    return TrainConfig(**(base | kw))


def _recording_run(log: Any, config: TrainConfig, seen_dir: str) -> Any:
    """One process of a 2-process run (what run_processes starts), recording which training images
    its loader served, in order."""
    from graft.data.memory import MemoryDataset
    from graft.modalities import image

    seen: list[int] = []
    getitem = MemoryDataset.__getitem__
    image.default_workers = lambda: 0  # the loader reads in this process, where it is recorded

    def recorded(self: Any, key: Any) -> Any:
        seen.append(int(key[1] if isinstance(key, tuple) else key))  # (epoch, index) or index
        return getitem(self, key)

    MemoryDataset.__getitem__ = recorded  # type: ignore[method-assign]
    result = _run_process(log, config, None, None)
    Path(seen_dir, f"seen-{ranks.rank()}.json").write_text(json.dumps(seen))
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    make_image_folder(root / "data" / "train", per_class=10, seed=0)  # 30 images: 3 batches of 8
    make_image_folder(root / "data" / "val", per_class=6, seed=1)
    return root / "data"


def test_two_cpu_processes_share_the_batches_and_match_one_process(data, tmp_path, monkeypatch):
    started = time.perf_counter()
    out2, out1 = tmp_path / "two", tmp_path / "one"
    lines: list[str] = []
    two = _config(data, out2, devices=2)
    run_dir, report2 = launcher.launch(_recording_run, (two, str(tmp_path)), 2, CPU, lines.append)
    launched = time.perf_counter() - started

    # one process alone, same data and settings, same feature cache (its entry written by rank 0)
    from graft.data.memory import MemoryDataset
    from graft.modalities import image

    seen1: list[int] = []
    getitem = MemoryDataset.__getitem__

    def recorded(self: Any, key: Any) -> Any:
        seen1.append(int(key[1] if isinstance(key, tuple) else key))  # (epoch, index) or index
        return getitem(self, key)

    monkeypatch.setattr(image, "default_workers", lambda: 0)
    monkeypatch.setattr(MemoryDataset, "__getitem__", recorded)
    report1 = run(_config(data, out1), log=lambda line: None).report

    # disjoint parts of exactly the single process's batches: 2 fine-tuning epochs x 3 batches of 8
    ranks = [json.loads((tmp_path / f"seen-{r}.json").read_text()) for r in (0, 1)]
    assert [len(s) for s in ranks] == [24, 24] and len(seen1) == 48
    for step in range(6):
        part0, part1 = ranks[0][4 * step : 4 * step + 4], ranks[1][4 * step : 4 * step + 4]
        assert not set(part0) & set(part1)
        assert sorted(part0 + part1) == sorted(seen1[8 * step : 8 * step + 8])

    # rank 0 wrote one run folder, with one bundle; its lines reached the launcher's log
    assert Path(run_dir) == out2
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("graft.json")] == [
        Path("one/graft.json"),
        Path("two/graft.json"),
    ]
    assert any(line.startswith("fine-tuning: 2 epoch(s)") for line in lines)
    assert report2["distributed"] == {"world_size": 2, "backend": "gloo", "devices": ["cpu", "cpu"]}
    assert report1["distributed"] == {"world_size": 1, "backend": None, "devices": ["cpu"]}

    # the same training: accuracy equal, losses within float-summation tolerance
    assert report2["validation"]["accuracy"] == report1["validation"]["accuracy"]
    for a, b in zip(report2["history"], report1["history"], strict=True):
        assert a["val_accuracy"] == b["val_accuracy"]
        # the same steps, summed in another order (per-process half-batch means, then an all-reduce):
        # losses of ~0.01 drift apart by up to a few 1e-5 over the epochs
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2, abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-5)
    w1, w2 = load_file(str(out1 / "model.safetensors")), load_file(str(out2 / "model.safetensors"))
    assert max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1) < 1e-4

    # the 2-process extraction went to the cache, in the format a single process reads
    assert report2["timing"]["feature_cache_hit"] is False
    assert report1["timing"]["feature_cache_hit"] is True
    print(f"2-process run {launched:.1f}s (launch included)")


# --------------------------------------------------------------------------- errors, before any process


def test_more_devices_than_cores_is_a_one_line_error(data, tmp_path, capsys):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args = ["train", str(data / "train"), "--device", "cpu", "--devices", str(cores + 1)]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"graft: error: --devices {cores + 1}: this machine has {cores} CPU core(s); use at most {cores}"
    )
    assert not (tmp_path / "run").exists()


def test_a_port_in_use_is_a_one_line_error(data, tmp_path, capsys, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MASTER_PORT", str(port))
        args = ["train", str(data / "train"), "--device", "cpu", "--devices", "2"]
        assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"graft: error: port {port} (MASTER_PORT) is in use") and "\n" not in err


def test_devices_under_another_launcher_must_match_it(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    ranks.check_devices(1)
    ranks.check_devices(4)
    with pytest.raises(ConfigError, match="the launcher started 4 processes"):
        ranks.check_devices(2)


def test_alone_every_helper_is_a_no_op():
    assert (ranks.world_size(), ranks.rank(), ranks.is_main()) == (1, 0, True)
    assert shards.shard([5, 3, 9]) == [5, 3, 9] and ranks.local_batch_size(64) == 64
    assert ranks.rank_seed(7) == 7 and ranks.from_main("x") == "x"
    assert ranks.setup(CPU) == CPU and not ranks.any_process(False)
    model = torch.nn.Linear(2, 2)
    assert ddp.DataParallel(model).wrap() is model


def test_shards_are_disjoint_and_cover_the_batch(monkeypatch):
    monkeypatch.setattr(shards, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(shards, "rank", lambda r=r: r)
        parts.append(shards.shard(list(range(10))))
    assert sorted(sum(parts, [])) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]
    monkeypatch.setattr(shards, "rank", lambda: 2)
    assert shards.shard([7, 8]) == [7]  # fewer examples than processes: each still gets one


class _Failure:
    def __init__(self, message: Any, exitcode: int = 1) -> None:
        self.message, self.exitcode = message, exitcode

    def signal_name(self) -> str:
        return "SIGKILL"


class _Failed:
    def __init__(self, rank: int, failure: _Failure) -> None:
        self.first = (rank, failure)

    def get_first_failure(self) -> tuple[int, _Failure]:
        return self.first


def test_a_process_error_is_reported_as_one_line():
    error = launcher._failure(_Failed(1, _Failure({"message": "DataError: no readable images"})), 2)
    assert isinstance(error, DataError) and str(error) == "no readable images"
    killed = launcher._failure(_Failed(1, _Failure("Signal 9", exitcode=-9)), 2)
    assert isinstance(killed, DistributedError)
    assert str(killed) == "process 1 of 2 was killed (SIGKILL); the other processes were stopped"


# --------------------------------------------------------------------------- a process that dies or hangs


def _dies_on_rank_1(log: Any, how: str) -> str:
    ranks.setup(CPU)
    if ranks.rank() == 1:
        if how == "dies":
            os._exit(3)
        time.sleep(120)  # hangs
    ranks.any_process(True)  # rank 0 waits for rank 1 here
    return "unreachable"


@pytest.mark.slow  # ~10 s of process start-up; the launcher's error mapping is tested just above
def test_a_dying_process_stops_the_others_with_one_line():
    started = time.perf_counter()
    with pytest.raises(DistributedError, match=r"^process 1 of 2 exited with code 3; the other processes"):
        launcher.launch(_dies_on_rank_1, ("dies",), 2, CPU)
    assert time.perf_counter() - started < 90


@pytest.mark.slow
def test_a_hanging_process_times_out_instead_of_hanging(monkeypatch):
    monkeypatch.setenv(ranks.TIMEOUT_ENV, "5")
    started = time.perf_counter()
    with pytest.raises(DistributedError, match=r"process 0 of 2 waited 5s for the others and gave up"):
        launcher.launch(_dies_on_rank_1, ("hangs",), 2, CPU)
    assert time.perf_counter() - started < 90


# --------------------------------------------------------------------------- --resume


def _interrupted_run(log: Any, config: TrainConfig) -> Any:
    from graft.training.checkpoint import Checkpointer

    save = Checkpointer.save

    def save_then_interrupt(self: Any, *args: Any, **kwargs: Any) -> None:
        save(self, *args, **kwargs)
        raise RuntimeError("stopped after the first checkpoint")

    Checkpointer.save = save_then_interrupt  # type: ignore[method-assign]
    return _run_process(log, config, None, None)


@pytest.mark.slow
def test_a_two_process_run_resumes_to_the_uninterrupted_weights(data, tmp_path):
    # no probe: the fine-tuned weights are the bundle's, whichever epoch is kept
    straight = _config(data, tmp_path / "straight", devices=2, freeze_epochs=0)
    launcher.launch(_run_process, (straight, None, None), 2, CPU)
    cut = _config(data, tmp_path / "cut", devices=2, freeze_epochs=0)
    with pytest.raises(DistributedError, match="process 0 of 2 failed: RuntimeError: stopped after"):
        launcher.launch(_interrupted_run, (cut,), 2, CPU)
    assert (tmp_path / "cut" / "checkpoint.json").is_file()
    resumed = _config(data, tmp_path / "cut", devices=2, freeze_epochs=0, resume=True)
    launcher.launch(_run_process, (resumed, None, None), 2, CPU)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
