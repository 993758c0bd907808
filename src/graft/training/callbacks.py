"""Callbacks for the one loop (training/loop.py): evaluation, checkpoints, early stopping, the
deadline, progress, step timing and the learning-rate range test."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bundle import atomic_write
from ..distributed import ranks
from ..heads import upgrade_head_keys
from ..progress import Progress
from ..runtime.device import host_waits_allowed, synchronize
from ..runtime.inference import forward_all
from ..tasks import Task
from .checkpoint import Checkpointer
from .loop import Callback, Loop


class Evaluate(Callback):
    """The task's validation numbers (loss and its monitored metric: accuracy and macro-F1 for
    single-label) into each epoch's history row."""

    def __init__(self, eval_set: Any, task: Task) -> None:
        self.eval_set, self.task = eval_set, task

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        batches = self.eval_set.batches(loop.device)
        logits = forward_all(loop.model, batches, len(self.eval_set), across_ranks=True)
        row.update(self.task.validation_row(logits, self.eval_set.labels))


class PreciseBN(Callback):
    """BatchNorm statistics recomputed exactly on un-augmented training inputs after each epoch,
    before evaluation ("precise BN", Wu & Johnson 2021, "Rethinking Batch in BatchNorm"): a network
    trained from scratch for a few hundred steps has running averages still far from the
    statistics of its current weights, and evaluates near chance with them."""

    def __init__(self, inputs: Callable[[], Any]) -> None:
        self.inputs = inputs  # () -> iterator of input batches on the model's device

    @torch.no_grad()
    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        norms = [m for m in loop.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the pass
        loop.model.train()
        for x in self.inputs():
            loop.model(x)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


class Checkpoint(Callback):
    """Restore a checkpoint when resuming; save model + optimizer + state after every epoch (rank 0
    of a multi-process run; every process restores)."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer

    def on_fit_start(self, loop: Loop) -> None:
        loop.state = self.checkpointer.restore(loop.model, loop.optimizer, loop.scaler)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        if ranks.is_main():
            self.checkpointer.save(loop.model, loop.optimizer, loop.state, loop.scaler)


class KeepBest(Callback):
    """Keeps the weights of the epoch with the best validation score (`monitor`, a history key:
    the task's metric, higher is better); the weights the fit starts from count too, as epoch 0
    with `start_score` (fine-tuning after a probe: the probe's head on the pretrained body). Ties go
    to the earlier, cheaper model. With `path`, the best weights also go to disk (safetensors), so
    a resumed run restores the same model as an uninterrupted one."""

    def __init__(
        self,
        start_score: float | None,
        path: Path | None = None,
        resume: bool = False,
        start_state: dict[str, torch.Tensor] | None = None,
        monitor: str = "val_accuracy",
    ) -> None:
        """`start_score`: the validation score of the model before the first epoch (a probe's),
        whose weights are the model's at the start, or `start_state` when given."""
        self.start_score, self.path, self.resume = start_score, path, resume
        self.start_state, self.monitor = start_state, monitor
        self.score: float | None = None
        self.epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    @property
    def _what(self) -> str:
        return "validation " + self.monitor.removeprefix("val_").replace("_", " ")

    def on_fit_start(self, loop: Loop) -> None:
        if self.resume and self.path is not None and self.path.is_file():
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                self.state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
            self.state = upgrade_head_keys(self.state)  # saved before the head's parts had names
            self.score, self.epoch = float(meta[self.monitor]), int(meta["epoch"])
        elif self.start_score is not None:
            self._keep(loop, self.start_score, 0, self.start_state)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        score = row.get(self.monitor)
        if score is not None and (self.score is None or score > self.score):
            self._keep(loop, score, row["epoch"])

    def _keep(
        self, loop: Loop, score: float, epoch: int, state: dict[str, torch.Tensor] | None = None
    ) -> None:
        self.score, self.epoch = float(score), epoch
        weights = (state if state is not None else loop.model.state_dict()).items()
        self.state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights}
        if self.path is not None and ranks.is_main():
            from safetensors.torch import save_file

            meta = {"epoch": str(epoch), self.monitor: repr(self.score)}
            atomic_write(self.path, lambda tmp: save_file(self.state, str(tmp), metadata=meta))

    def restore(self, model: nn.Module, last_epoch: int) -> dict[str, Any]:
        """Load the best weights into `model` unless they are the last epoch's; says what was kept."""
        if self.state is None:
            reason = "no validation examples to choose by: the last epoch is kept"
            return {"epoch": last_epoch, "reason": reason}
        kept = {"epoch": self.epoch, self.monitor: self.score}
        if self.epoch == last_epoch:
            return kept | {"reason": f"the last epoch has the best {self._what}"}
        model.load_state_dict(self.state)
        what = "the probe's head on the pretrained backbone" if self.epoch == 0 else f"epoch {self.epoch}"
        return kept | {
            "reason": f"{what} has the best {self._what} (ties go to the earlier epoch); "
            f"its weights replace the last epoch's ({last_epoch})"
        }


class EarlyStopping(Callback):
    """Stop after `patience` epochs without a better validation score (`monitor`)."""

    def __init__(self, patience: int | None, monitor: str = "val_accuracy") -> None:
        self.patience, self.monitor = patience, monitor

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        scores = [r[self.monitor] for r in loop.state.history if self.monitor in r]
        if self.patience and scores and len(scores) - 1 - int(np.argmax(scores)) >= self.patience:
            loop.stop = True


class BehindProbe(Callback):
    """`auto`'s stop for fine-tuning that does not pay: after `after` epochs, when no epoch has beaten
    the probe's validation score (`probe_score`), fine-tuning stops and keep-best keeps the probe.
    Half the planned epochs (at least 2, `finetune._behind_probe`): the warm-up and the highest
    learning rates are behind by then, and an epoch that beats the probe by one example continues.
    Sooner when the first epoch already lies below the probe by more than one standard error of
    the probe's score (`noise`, the task's; 0: no such rule): fine-tuning that starts that far
    behind rarely wins, and its remaining epochs are the run's largest cost."""

    def __init__(
        self, probe_score: float, after: int, monitor: str, log: Callable[[str], None], noise: float = 0.0
    ) -> None:
        self.probe_score, self.after, self.monitor, self.log = probe_score, after, monitor, log
        self.noise = noise

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        scores = [r[self.monitor] for r in loop.state.history if self.monitor in r]
        if loop.stop or not scores:
            return
        name = self.monitor.removeprefix("val_")
        if len(scores) == 1 and self.noise > 0 and scores[0] < self.probe_score - self.noise:
            loop.stop = True
            self.log(
                f"fine-tuning stops after its first epoch: validation {name} {scores[0]:.4f} is below "
                f"the probe's {self.probe_score:.4f} by more than one standard error ({self.noise:.4f})"
            )
        elif len(scores) >= self.after and max(scores) <= self.probe_score:
            loop.stop = True
            self.log(
                f"fine-tuning stops after {len(scores)} epoch(s): none beat the probe's validation "
                f"{name} ({self.probe_score:.4f})"
            )


class Deadline(Callback):
    """Stop cleanly after the step that crosses `at` (a time.perf_counter() value). It reads the
    host's clock without waiting for the device: a GPU's queue holds at most a few steps, so the
    stop comes at most those few steps late, and no step waits for the clock."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.fired = False  # whether the clock ended the fit (not its epochs or another stop)

    def on_step_end(self, loop: Loop, loss: torch.Tensor) -> None:
        self._check(loop)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        self._check(loop)

    def _check(self, loop: Loop) -> None:
        if time.perf_counter() > self.at and not loop.stop:
            loop.stop = self.fired = True


class EpochLog(Callback):
    """One line per epoch, for phases whose epochs take minutes (fine-tuning); a linear probe's
    hundreds of millisecond epochs get the progress bar and one summary line instead."""

    def __init__(self, log: Callable[[str], None], epochs: int | str) -> None:
        self.log, self.epochs = log, epochs  # "~N" under a time budget: about N fit

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        line = f"epoch {row['epoch']}/{self.epochs}  loss {row['train_loss']:.4f}"
        line += "".join(f"  {name} {value:.4f}" for name, value in validation_numbers(row))
        self.log(f"{line}  ({row['train_seconds']:.1f}s)")


SHORT_NAMES = {"val_accuracy": "val_acc", "val_macro_f1": "val_f1", "val_map": "val_mAP", "val_r2": "val_R2"}


def validation_numbers(row: dict[str, Any]) -> list[tuple[str, float]]:
    """A history row's validation numbers as the one-line summaries name them."""
    return [(SHORT_NAMES.get(k, k), v) for k, v in row.items() if k.startswith("val_") and v is not None]


class ProgressBar(Callback):
    """A bar over the phase's steps on a terminal (a line every 30 s in logs); the last epoch's
    validation score (`monitor`) shows beside it."""

    def __init__(self, desc: str, total_steps: int, monitor: str = "val_accuracy") -> None:
        self.desc, self.total, self.monitor = desc, total_steps, monitor
        self.bar: Progress | None = None

    def on_fit_start(self, loop: Loop) -> None:
        self.bar = Progress(self.total, self.desc, unit="step")
        self.bar.update(min(self.total, loop.state.step))

    def on_step_end(self, loop: Loop, loss: torch.Tensor) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        if self.bar is not None and self.monitor in row:
            name = SHORT_NAMES.get(self.monitor, self.monitor)
            self.bar.note(f"epoch {row['epoch']}, {name} {row[self.monitor]:.4f}")

    def on_fit_end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()


class StepTimer(Callback):
    """Seconds per training step (forward, backward and optimizer step on real batches): stops
    after `steps` + 1 steps and keeps the gaps between step ends, so the first step's one-off
    allocations and loader start-up are left out."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.ends: list[float] = []

    def on_step_end(self, loop: Loop, loss: torch.Tensor) -> None:
        synchronize(loop.device)  # the step's end on the device, not when the host queued it
        self.ends.append(time.perf_counter())
        if len(self.ends) > self.steps:
            loop.stop = True

    @property
    def seconds_per_step(self) -> float:
        gaps = np.diff(self.ends)
        return float(np.median(gaps)) if len(gaps) else math.nan


class LRFinder(Callback):
    """The learning-rate range test (Smith 2017; fastai's lr_find) as a schedule and a recorder:
    the LR grows exponentially from `start` to `end` over `steps` steps; the smoothed loss is
    recorded, and the test stops once it diverges (4x its minimum)."""

    def __init__(self, start: float = 1e-7, end: float = 10.0, steps: int = 100) -> None:
        self.start, self.steps = start, steps
        self.factor = (end / start) ** (1 / max(1, steps - 1))
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smooth = 0.0

    def schedule(self, loop: Loop, i: int) -> float:
        return self.start * self.factor**loop.state.step

    def on_step_end(self, loop: Loop, loss: torch.Tensor) -> None:
        n = len(self.losses)
        with host_waits_allowed():  # waits for the step: the test needs it
            self.smooth = 0.9 * self.smooth + 0.1 * float(loss)
        self.lrs.append(self.start * self.factor**n)
        self.losses.append(self.smooth / (1 - 0.9 ** (n + 1)))  # bias-corrected exponential average
        if not np.isfinite(self.losses[-1]) or self.losses[-1] > 4 * min(self.losses) or n + 1 >= self.steps:
            loop.stop = True
