"""Experiment trackers (`--log-to tensorboard,mlflow,csv`): one `Tracking` per run, and a callback on
the one loop per training phase.

What is logged, to each tracker: the config (when the run folder is known) and the resolved plan
(at the end, once final) as parameters; per-step loss and LR; each epoch's history row (train_loss,
val_loss and the task's validation metrics); the final validation and test metrics; the plots the
report wrote (confusion matrix, curves) as images; for MLflow also the run folder (the bundle) as
an artefact. Tags are `<phase>/<name>`: `probe/loss`, `finetune/val_accuracy`, `test/accuracy`.

The loop hands each step's loss over as a tensor on the device; reading it waits for the device,
so losses are kept as tensors and read together every FLUSH_STEPS steps and at each epoch's end
(one wait per FLUSH_STEPS steps, and none at all without a tracker). Nothing here knows the
modality. In a multi-process run, rank 0 alone logs (its per-step loss is its share of the batch).

The libraries are optional extras, imported when the run folder is known (`TrainConfig.check_extras`
finds them before any data is read): `pip install 'graft-learn[tensorboard]'`, `'graft-learn[mlflow]'`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from ..bundle import atomic_write
from ..config import Plan, TrainConfig
from ..distributed import ranks
from ..runtime.device import host_waits_allowed
from .loop import Callback, Loop

FLUSH_STEPS = 100  # step losses read from the device together, this many at a time
PLOTS = ("confusion.png", "curves.png", "predicted.png")  # what the report draws, when it does
MLFLOW_PARAM_CHARS = 500  # the longest parameter value every MLflow version takes
MLFLOW_BATCH = 100  # parameters per MLflow log_batch call (its limit; metrics: 1000)
SKIPPED_ROW_KEYS = {"epoch", "stage", "lr"}  # not numbers, or logged per step already


class Record(NamedTuple):
    """One number: `per` says its x axis in TensorBoard and MLflow (the step, the epoch, or none)."""

    phase: str
    epoch: int | None
    step: int | None
    name: str
    value: float
    per: str  # "step", "epoch" or "run"

    @property
    def tag(self) -> str:
        return f"{self.phase}/{self.name}"

    @property
    def x(self) -> int:
        return {"step": self.step, "epoch": self.epoch}.get(self.per) or 0


def tracker_names(config: TrainConfig) -> list[str]:
    return config.log_to.split(",") if config.log_to else []


def numbers_of(values: dict[str, Any] | None) -> dict[str, float]:
    """The finite numbers of a metrics dict or history row (not the confusion matrix, lists, None)."""
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _metrics(values: dict[str, Any] | None) -> dict[str, float]:
    return {k: v for k, v in numbers_of(values).items() if k != "n"}  # n: how many examples, not a metric


def flat_params(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """{'preprocessing': {'size': 32}} -> {'plan.preprocessing.size': '32'}; lists as JSON."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out |= flat_params(name, value)
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


# --------------------------------------------------------------------------- the trackers


class Tracker(Protocol):
    def params(self, section: str, values: dict[str, str]) -> None: ...

    def scalars(self, records: Sequence[Record]) -> None: ...

    def images(self, paths: Sequence[Path]) -> None: ...

    def close(self, run_dir: Path, status: str) -> None: ...


class TensorBoardTracker:
    """Event files in <run>/tensorboard (`tensorboard --logdir runs`); parameters as a text table."""

    def __init__(self, run_dir: Path, config: TrainConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = run_dir / "tensorboard"
        if not config.resume:  # a replaced run (--overwrite) leaves no old curves behind
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(log_dir=str(folder))

    def params(self, section: str, values: dict[str, str]) -> None:
        rows = "".join(f"| {name} | {value} |\n" for name, value in values.items())
        self.writer.add_text(section, "| name | value |\n| --- | --- |\n" + rows)
        self.writer.flush()

    def scalars(self, records: Sequence[Record]) -> None:
        for r in records:
            self.writer.add_scalar(r.tag, r.value, global_step=r.x)
        self.writer.flush()

    def images(self, paths: Sequence[Path]) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(path.stem, pixels, global_step=0, dataformats="HWC")

    def close(self, run_dir: Path, status: str) -> None:
        self.writer.close()


class CsvTracker:
    """<run>/metrics.csv, tidy (phase, epoch, step, name, value), appended a whole flush at a time;
    the parameters in <run>/params.csv, written atomically."""

    COLUMNS = ("phase", "epoch", "step", "name", "value")

    def __init__(self, run_dir: Path, config: TrainConfig) -> None:
        self.run_dir, self.path = run_dir, run_dir / "metrics.csv"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (config.resume and self.path.is_file()):  # a resumed run goes on appending
            atomic_write(self.path, lambda tmp: tmp.write_text(",".join(self.COLUMNS) + "\n"))
        self.params_seen: dict[str, str] = {}

    def params(self, section: str, values: dict[str, str]) -> None:
        self.params_seen |= values
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(("name", "value"))
        writer.writerows(self.params_seen.items())
        atomic_write(self.run_dir / "params.csv", lambda tmp: tmp.write_text(text.getvalue()))

    def scalars(self, records: Sequence[Record]) -> None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        for r in records:
            writer.writerow(
                (
                    r.phase,
                    "" if r.epoch is None else r.epoch,
                    "" if r.step is None else r.step,
                    r.name,
                    repr(r.value),
                )
            )
        with open(self.path, "a", newline="") as f:  # whole lines, one write: a reader never sees half
            f.write(text.getvalue())
            f.flush()

    def images(self, paths: Sequence[Path]) -> None:
        pass  # the plots are in the run folder already

    def close(self, run_dir: Path, status: str) -> None:
        pass


class MlflowTracker:
    """One MLflow run in the experiment $MLFLOW_EXPERIMENT_NAME (else `graft`), in the store MLflow
    itself picks: $MLFLOW_TRACKING_URI, else its own default (MLflow 3.7+: `./mlflow.db`, artefacts
    in `./mlruns`), so `mlflow ui` and `mlflow.search_runs()` in the same folder find it. Logged:
    metrics, parameters, the plots under `images/` and, at the end, the run folder under `run/`."""

    def __init__(self, run_dir: Path, config: TrainConfig) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # no URI of graft's own: wherever MLflow would log
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "graft"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        tags = {"graft.run_dir": str(run_dir.resolve())}
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        # a run folder that holds the store (`--out .`) must not be logged into itself
        uris = (self.client.tracking_uri, run.info.artifact_uri)
        self.store = [path for uri in uris if (path := _local_path(uri)) is not None]

    def params(self, section: str, values: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:MLFLOW_PARAM_CHARS]) for k, v in values.items()]
        for start in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MLFLOW_BATCH])

    def scalars(self, records: Sequence[Record]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(r.tag, r.value, now, r.x) for r in records]
        for start in range(0, len(items), 10 * MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + 10 * MLFLOW_BATCH])

    def images(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), "images")

    def close(self, run_dir: Path, status: str) -> None:
        if status == "FINISHED":
            for entry in sorted(run_dir.iterdir()):
                if any(_holds(entry, store) for store in self.store):
                    continue  # the store itself: its database, its artefacts
                if entry.is_dir():
                    self.client.log_artifacts(self.run_id, str(entry), f"run/{entry.name}")
                else:
                    self.client.log_artifact(self.run_id, str(entry), "run")
        self.client.set_terminated(self.run_id, status)


def _local_path(uri: str) -> Path | None:
    """The file or folder of a local store (a path, a file: URI, a SQLite database), else None (a
    server, another database)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve()
    if uri.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return Path(url2pathname(urlparse(uri).path)).resolve()
    return None if ":" in uri.split("/")[0] or uri.startswith("databricks") else Path(uri).resolve()


def _holds(entry: Path, store: Path) -> bool:
    """The entry is the store, holds it, or is one of a database's own files (`mlflow.db-journal`)."""
    entry = entry.resolve()
    journal = entry.parent == store.parent and entry.name.startswith(f"{store.name}-")
    return entry in (store, *store.parents) or journal


BACKENDS: dict[str, type] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "csv": CsvTracker}


# --------------------------------------------------------------------------- one run's trackers


class Tracking:
    """The run's trackers. Numbers logged before the run folder is known (`auto`'s probe runs
    first, and the folder's default name holds the strategy it chooses) wait in memory until
    `open`. Off (no trackers, no callbacks) without --log-to and on every rank but 0."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = list(names) if ranks.is_main() else []
        self.trackers: list[Tracker] = []
        self.waiting: list[Record] = []
        self.run_dir: Path | None = None

    @property
    def on(self) -> bool:
        return bool(self.names)

    def callbacks(self, phase: str) -> list[Callback]:
        return [TrackSteps(self, phase)] if self.on else []

    def open(self, run_dir: Path, config: TrainConfig) -> None:
        if not self.on:
            return
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.trackers = [t for name in self.names if (t := self._started(name, run_dir, config)) is not None]
        self._each("params", "config", flat_params("config", config.to_dict()))
        waiting, self.waiting = self.waiting, []
        self.log(waiting)

    def log(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self.run_dir is None:
            self.waiting.extend(records)
        else:
            self._each("scalars", records)

    def finish(self, plan: Plan, report: dict[str, Any]) -> None:
        """The final plan and metrics, the plots; then each tracker closes (MLflow, last, takes the
        run folder with the others' files in it)."""
        if not self.on or self.run_dir is None:
            return
        self._each("params", "plan", flat_params("plan", plan.to_dict()))
        final = [("val", report.get("validation")), ("test", report.get("test"))]
        self.log(
            [Record(split, None, None, k, v, "run") for split, m in final for k, v in _metrics(m).items()]
        )
        self._each("images", [self.run_dir / name for name in PLOTS if (self.run_dir / name).is_file()])
        self._close("FINISHED")

    @contextmanager
    def failing(self) -> Iterator[None]:
        """A run that raises (or is interrupted) ends its tracker runs as failed (killed)."""
        try:
            yield
        except BaseException as err:
            if self.run_dir is not None:
                self._close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise

    def _close(self, status: str) -> None:
        order = sorted(self.trackers, key=lambda t: isinstance(t, MlflowTracker))
        self.trackers = []
        for tracker in order:
            self._guarded(tracker, "close", self.run_dir, status)
        self.names = []  # closed: later calls do nothing

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            if not self._guarded(tracker, method, *args):
                self.trackers.remove(tracker)

    def _started(self, name: str, run_dir: Path, config: TrainConfig) -> Tracker | None:
        try:
            return BACKENDS[name](run_dir, config)
        except Exception as err:  # noqa: BLE001 - a tracker that cannot start must not stop the training
            _warn_dropped(name, err)
            return None

    @staticmethod
    def _guarded(tracker: Tracker, method: str, *args: Any) -> bool:
        """Call a tracker; when it fails (a server out of reach, a full disk), say so once and
        return False: logging is a side channel, and a run (or its written bundle) outlives it."""
        try:
            getattr(tracker, method)(*args)
        except Exception as err:  # noqa: BLE001 - any tracker error: the run goes on without it
            _warn_dropped(type(tracker).__name__.removesuffix("Tracker").lower(), err)
            return False
        return True


def _warn_dropped(name: str, err: BaseException) -> None:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    warnings.warn(f"graft: the {name} tracker failed ({first}); the run goes on without it", stacklevel=3)


class TrackSteps(Callback):
    """Per-step loss and LR, and each epoch's history row, for one phase (`probe`, `finetune`).
    Goes after Evaluate in the callback list: the row then holds the validation numbers."""

    def __init__(self, tracking: Tracking, phase: str, every: int = FLUSH_STEPS) -> None:
        self.tracking, self.phase, self.every = tracking, phase, every
        self.pending: list[tuple[int, int, float, torch.Tensor]] = []  # epoch, step, lr, loss

    def on_step_end(self, loop: Loop, loss: torch.Tensor) -> None:
        # the head's LR: the largest of the discriminative LRs
        lr = max(g["lr"] for g in loop.optimizer.param_groups)
        self.pending.append((loop.state.epoch + 1, loop.state.step, lr, loss))
        if len(self.pending) >= self.every:
            self._flush()

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None:
        self._flush()
        shown = {k: v for k, v in numbers_of(row).items() if k not in SKIPPED_ROW_KEYS}
        epoch, step = row["epoch"], loop.state.step
        self.tracking.log([Record(self.phase, epoch, step, k, v, "epoch") for k, v in shown.items()])

    def on_fit_end(self, loop: Loop) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        with host_waits_allowed():  # one wait for all of them, every `every` steps
            losses = torch.stack([p[3] for p in self.pending]).tolist()
        records = []
        for (epoch, step, lr, _), loss in zip(self.pending, losses, strict=True):
            records += [
                Record(self.phase, epoch, step, "loss", loss, "step"),
                Record(self.phase, epoch, step, "lr", lr, "step"),
            ]
        self.pending = []
        self.tracking.log(records)
