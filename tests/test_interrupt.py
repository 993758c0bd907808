"""kill -9 and Ctrl-C: a fine-tuning run killed anywhere (mid-epoch, mid-checkpoint, mid-bundle)
leaves no half-written file where a reader would take it, and `--resume` ends with the very weights
of an uninterrupted run. Ctrl-C keeps the checkpoint and prints the command that continues.

The killed runs are forked from this (already imported) process, which runs `graft.cli.main` in
the child: SIGKILL then lands at a point the child announces, for the price of training alone, not
of a fresh interpreter importing torch. Hooks exist only in the child: a global optimizer
post-step hook (kill after step N) and a wrapper of `atomic_write` that stops after the temporary
file is written and before it is renamed (kill mid-write). The Ctrl-C test is a real `python -m
graft.cli` subprocess in its own session, interrupted as a terminal would: SIGINT to its group.
The kill points past the default five are marked slow.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from safetensors import safe_open
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

import graft
from graft.bundle import stale_temp_files
from graft.cli import main
from graft.errors import BundleError

# A tiny timm test network, randomly initialised (nothing to download), at 32 px: 21 training
# images in batches of 4 are 5 steps per epoch, 10 in all; no probe, so every step is in the loop.
TRAIN = ["--backbone", "timm/test_efficientnet", "--weights", "random", "--strategy", "finetune"]
TRAIN += ["--freeze-epochs", "0", "--image-size", "32", "--batch-size", "4"]
STEPS_PER_EPOCH, EPOCHS = 5, 2
KILL_TIMEOUT = 120.0  # seconds to wait for the child to reach its kill point (busy machines)

# (kind, what, nth): kill after optimizer step N, or while the nth write of a file is a temp file.
KILL_POINTS = {
    "epoch 2, step 3": ("step", "", STEPS_PER_EPOCH + 3),
    "writing the epoch-2 checkpoint tensors": ("write", "checkpoint.safetensors", 2),
    "between checkpoint tensors and checkpoint.json": ("write", "checkpoint.json", 2),
    "writing the bundle's weights": ("write", "model.safetensors", 1),
    "writing graft.json": ("write", "graft.json", 1),
}
SLOW_KILL_POINTS = {  # the same checks, a little further apart: -m slow
    "epoch 1, step 2 (no checkpoint yet)": ("step", "", 2),
    "writing report.json (bundle complete)": ("write", "report.json", 1),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("interrupt") / "data", per_class=8, seed=0)


def _argv(data: Path, out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return ["train", str(data), *TRAIN, "--epochs", str(epochs), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must match, checkpoint kept for the comparison."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(_argv(data, out, "--keep-checkpoint")) == 0
    return out


def _pause(marker: Path) -> None:
    marker.write_text("paused")
    time.sleep(KILL_TIMEOUT * 2)  # the parent kills this process meanwhile


def _child(argv: list[str], kind: str, what: str, nth: int, marker: Path, log: Path) -> None:
    """In the forked child: install the kill-point hook, then run the CLI."""
    import graft.bundle
    import graft.training.callbacks
    import graft.training.checkpoint

    sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 - lives as long as the child
    if kind == "step":
        steps = [0]

        def after_step(optimizer, args, kwargs) -> None:
            steps[0] += 1
            if steps[0] == nth:
                _pause(marker)

        register_optimizer_step_post_hook(after_step)
    else:
        real, writes = graft.bundle.atomic_write, [0]

        def atomic_write(path: Path, write) -> None:
            def write_then_pause(tmp: Path) -> None:
                write(tmp)
                if Path(path).name == what:
                    writes[0] += 1
                    if writes[0] == nth:
                        _pause(marker)  # the temp file is complete; the rename has not happened

            real(path, write_then_pause)

        for module in (graft.bundle, graft.training.checkpoint, graft.training.callbacks):
            module.atomic_write = atomic_write
    sys.exit(main(argv))


def _kill_at(argv: list[str], point: tuple[str, str, int], tmp_path: Path) -> str:
    """Run `graft train` in a forked child and SIGKILL it at `point`; returns what it printed."""
    marker, log = tmp_path / "paused", tmp_path / "child.log"
    child = multiprocessing.get_context("fork").Process(target=_child, args=(argv, *point, marker, log))
    child.start()
    deadline = time.monotonic() + KILL_TIMEOUT
    while not marker.exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    reached = marker.exists()
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    printed = log.read_text() if log.exists() else ""
    assert reached, f"the child never reached {point} (exit code {child.exitcode}):\n{printed[-2000:]}"
    assert child.exitcode == -signal.SIGKILL
    return printed


def _check_nothing_half_written(out: Path) -> None:
    """Every file a reader takes is whole; temp files are hidden (.NAME.XXXXXXXX.tmp)."""
    if not out.exists():  # killed before the first checkpoint: nothing written at all
        return
    for path in out.iterdir():
        if path.name.startswith("."):
            assert path in stale_temp_files(out), f"an unexpected hidden file {path.name}"
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                assert list(f.keys())  # noqa: SIM118 - safe_open is no dict
    if (out / "checkpoint.json").exists():
        state = json.loads((out / "checkpoint.json").read_text())
        assert state["step"] <= EPOCHS * STEPS_PER_EPOCH
    if (out / "graft.json").exists():
        assert graft.load(out).classes_ == ("blue", "green", "red")  # complete and verified
    else:
        with pytest.raises(BundleError, match="graft.json is missing"):
            graft.load(out)


def _same_file(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    different = [k for k in x if not torch.equal(x[k], y[k])]
    assert not different, f"{a.name}: {len(different)} of {len(x)} tensors differ, e.g. {different[:3]}"


HISTORY_KEYS = ("epoch", "stage", "train_loss", "val_loss", "val_accuracy", "lr")


# resumed without --keep-checkpoint (not part of what must match to resume): the finished run
# removes checkpoint.* (as large as the model) and best.safetensors
DROPS_CHECKPOINT = "epoch 2, step 3"


@pytest.mark.parametrize(
    "where", [*KILL_POINTS, *(pytest.param(w, marks=pytest.mark.slow) for w in SLOW_KILL_POINTS)]
)
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_weights(data, straight, tmp_path, where):
    out = tmp_path / "run"
    _kill_at(_argv(data, out, "--keep-checkpoint"), (KILL_POINTS | SLOW_KILL_POINTS)[where], tmp_path)
    _check_nothing_half_written(out)

    keep = [] if where == DROPS_CHECKPOINT else ["--keep-checkpoint"]
    fresh = not (out / "checkpoint.json").exists()
    with pytest.warns(UserWarning, match="holds no checkpoint") if fresh else contextlib.nullcontext():
        assert main(_argv(data, out, "--resume", *keep)) == 0

    assert stale_temp_files(out) == []  # the killed writes' temp files are gone with the finished run
    assert graft.load(out).classes_ == ("blue", "green", "red")
    _same_file(straight / "model.safetensors", out / "model.safetensors")
    if keep:
        _same_file(straight / "checkpoint.safetensors", out / "checkpoint.safetensors")
        assert json.loads((out / "checkpoint.json").read_text())["step"] == EPOCHS * STEPS_PER_EPOCH
    else:
        assert [p.name for p in out.iterdir() if "checkpoint" in p.name or "best" in p.name] == []
    history, expected = (json.loads((d / "report.json").read_text())["history"] for d in (out, straight))
    assert [{k: r[k] for k in HISTORY_KEYS} for r in history] == [
        {k: r[k] for k in HISTORY_KEYS} for r in expected
    ]
    assert len(history) == EPOCHS


@pytest.mark.timing
def test_ctrl_c_stops_within_seconds_keeps_the_checkpoint_and_prints_the_resume_command(data, tmp_path):
    """`python -m graft.cli train` in a process group of its own, SIGINT to the group (a terminal's
    Ctrl-C) after its first checkpoint: exit 130 within seconds, a whole checkpoint, and the exact
    command to go on. Ctrl-C right after a checkpoint lands as the next epoch's DataLoader forks
    its worker: before the fixes, CPython's at-fork hook swallowed the KeyboardInterrupt and
    training went on (this test timed out), or it cut a batch's transfer from the worker, which
    printed a traceback after graft's message."""
    out = tmp_path / "my run"
    argv = _argv(data, out, epochs=200)
    log = tmp_path / "out.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graft.cli", *argv],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
        )
    try:
        deadline = time.monotonic() + KILL_TIMEOUT
        checkpoint = out / "checkpoint.json"  # mid-training: after the first one, long before the end
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"graft train ended early:\n{log.read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        code = proc.wait(timeout=30)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    printed = log.read_text()
    assert code == 130, printed[-2000:]
    assert waited < 10, f"took {waited:.1f}s to stop after Ctrl-C"
    command = shlex.join(["graft", *argv, "--resume"])
    hint = f"graft: interrupted; the last checkpoint is kept in {out}, continue with: {command}"
    assert printed.strip().splitlines()[-1] == hint, printed[-3000:]
    state = json.loads((out / "checkpoint.json").read_text())
    assert 1 <= state["epoch"] < 200 and state["step"] == state["epoch"] * STEPS_PER_EPOCH
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        assert int(f.metadata()["step"]) == state["step"]
    assert not (out / "graft.json").exists() and stale_temp_files(out) == []


def test_ctrl_c_swallowed_by_an_at_fork_hook_still_stops_the_command(monkeypatch, capsys, tmp_path):
    """The defect behind the test above, made deterministic: a KeyboardInterrupt raised inside an
    at-fork hook (as Ctrl-C does when it lands while a DataLoader forks its worker) is only printed
    by CPython ("Exception ignored in ..."); `graft` raises it again, so the command still stops."""
    from graft import cli

    armed = [False]

    def interrupt_once() -> None:  # stays registered (there is no unregister): a no-op once used
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    os.register_at_fork(after_in_parent=interrupt_once)

    def trains_on(args) -> dict:
        armed[0] = True
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        until = time.monotonic() + 5
        while time.monotonic() < until:  # "training" that the lost interrupt never stopped
            time.sleep(0.01)
        return {}

    monkeypatch.setitem(cli.COMMANDS, "train", trains_on)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "a").mkdir(parents=True)  # the paths are checked before the command runs
    # Python's own Ctrl-C handler, whatever an earlier test left installed (torch's elastic launcher)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = time.monotonic()
        assert main(["train", "data", "--out", "somewhere"]) == 130
        assert time.monotonic() - started < 4
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "graft: interrupted" in capsys.readouterr().err
