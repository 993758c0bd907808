"""`--log-to tensorboard,mlflow,csv`: what each tracker holds after an image run and a text run,
read back through TensorBoard's own reader, MLflow's client and csv; the missing-extra error; rank 0
alone logging; step losses read from the device in batches."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, write_reviews
from torch import nn

import graft
from graft.cli import main
from graft.config import TrainConfig
from graft.distributed import ranks
from graft.errors import ConfigError
from graft.runner import run
from graft.training import recipes, trackers
from graft.training.loop import Callback, LoopConfig, fit
from graft.training.strategies import HEAD, Stage

pytest.importorskip("tensorboard", reason="--log-to tensorboard needs the `tensorboard` extra")
pytest.importorskip("mlflow", reason="--log-to mlflow needs the `mlflow` extra")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ALL = "tensorboard,mlflow,csv"
# a tiny random timm network at 32 px: a probe on cached features, then 2 epochs of 6 steps
IMAGE_ARGS = ["--backbone", "timm/test_efficientnet", "--weights", "random", "--image-size", "32"]
IMAGE_ARGS += ["--strategy", "finetune", "--epochs", "2", "--batch-size", "4", "--seed", "0"]


def _quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _without_mlflow_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}


@contextlib.contextmanager
def _mlflow_store(root: Path):
    """No MLflow settings, in `root`: graft logs where MLflow would by default (its SQLite
    database there); the URI, for the reading client."""
    with pytest.MonkeyPatch.context() as mp:
        for name in set(os.environ) - set(_without_mlflow_settings(dict(os.environ))):
            mp.delenv(name)
        mp.chdir(root)
        yield f"sqlite:///{(root / 'mlflow.db').resolve()}"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers-image")
    train = make_image_folder(root / "train", per_class=9, seed=0)
    test = make_image_folder(root / "test", per_class=3, seed=1)
    out = root / "run"
    with _mlflow_store(root) as uri:
        argv = ["train", str(train), "--test", str(test), *IMAGE_ARGS, "--out", str(out)]
        assert _quiet_main([*argv, "--log-to", ALL]) == 0
    return out, uri, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    root = tmp_path_factory.mktemp("trackers-text")
    train, test = write_reviews(root / "train.csv", 60, 0), write_reviews(root / "test.csv", 20, 1)
    out = root / "run"
    with _mlflow_store(root) as uri:
        clf = graft.Classifier(
            test=str(test),
            text_column="review",
            label_column="sentiment",
            strategy="finetune",
            train_groups=1,  # the top layer and the head: a few seconds on a CPU
            epochs=2,
            batch_size=16,
            out=str(out),
            log_to=["TensorBoard", "mlflow", "csv"],  # a list, in any case, works in Python
        )
        clf.fit(str(train), log=lambda line: None)
    return out, uri, clf.report_


RUNS = ["image_run", "text_run"]


def _phases(report: dict) -> list[str]:
    """The trackers' phases of a run: a probe on cached features first (images), then fine-tuning."""
    return ["probe", "finetune"] if report["history"][0]["epoch"] == 0 else ["finetune"]


def _tuned_history(report: dict) -> list[dict]:
    return [row for row in report["history"] if row["epoch"] > 0]  # epoch 0: the probe, merged in


def _steps(report: dict) -> int:
    n_train, batch = report["data"]["train"], report["plan"]["batch_size"]
    return len(_tuned_history(report)) * -(-n_train // batch)


# --------------------------------------------------------------------------- TensorBoard


@pytest.mark.parametrize("which", RUNS)
def test_tensorboard_holds_step_losses_epoch_metrics_params_and_plots(which, request):
    out, _, report = request.getfixturevalue(which)
    events = EventAccumulator(
        str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    tags = events.Tags()
    history = _tuned_history(report)
    # per step: every optimizer step of fine-tuning, numbered 1..N, each with its loss and LR
    losses = events.Scalars("finetune/loss")
    assert [e.step for e in losses] == list(range(1, _steps(report) + 1))
    assert all(e.value > 0 for e in losses)
    lrs = [e.value for e in events.Scalars("finetune/lr")]
    assert len(lrs) == len(losses) and 0 < max(lrs) <= report["plan"]["lr"] * 1.0001
    assert lrs[-1] < max(lrs) / 5  # the one-cycle schedule has annealed
    # per epoch: the history rows' numbers, at their epochs
    for key in ("train_loss", "val_loss", "val_accuracy"):
        logged = events.Scalars(f"finetune/{key}")
        assert [e.step for e in logged] == [row["epoch"] for row in history]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in history], rel=1e-5)
    if "probe" in _phases(report):
        assert events.Scalars("probe/loss") and events.Scalars("probe/val_accuracy")
    # the final numbers, the test's included
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(report["test"]["accuracy"])
    assert events.Scalars("val/accuracy")[0].value == pytest.approx(report["validation"]["accuracy"])
    # the plots and the parameters
    assert {"confusion", "curves"} <= set(tags["images"])
    assert {"config/text_summary", "plan/text_summary"} <= set(tags["tensors"])


# --------------------------------------------------------------------------- MLflow


def _mlflow_run(uri: str, out: Path):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("graft")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == [out.name]  # one run, named after the run folder
    return client, runs[0]


@pytest.mark.parametrize("which", RUNS)
def test_mlflow_holds_params_metrics_test_metrics_and_the_run_folder(which, request):
    out, uri, report = request.getfixturevalue(which)
    client, found = _mlflow_run(uri, out)
    run_id, params, metrics = found.info.run_id, found.data.params, found.data.metrics
    assert found.info.status == "FINISHED"
    # the config as asked and the plan as resolved
    assert params["config.log_to"] == ALL
    assert params["config.seed"] == "0"
    assert params["plan.strategy"] == report["plan"]["strategy"] == "finetune"
    assert params["plan.batch_size"] == str(report["plan"]["batch_size"])
    assert params["plan.modality"] == report["modality"]
    # per step and per epoch, with their steps
    steps = client.get_metric_history(run_id, "finetune/loss")
    assert sorted(m.step for m in steps) == list(range(1, _steps(report) + 1))
    history = _tuned_history(report)
    val_loss = sorted(client.get_metric_history(run_id, "finetune/val_loss"), key=lambda m: m.step)
    assert [m.step for m in val_loss] == [row["epoch"] for row in history]
    assert [m.value for m in val_loss] == pytest.approx([row["val_loss"] for row in history])
    # the test metrics
    assert metrics["test/accuracy"] == pytest.approx(report["test"]["accuracy"])
    assert metrics["test/macro_f1"] == pytest.approx(report["test"]["macro_f1"])
    # the run folder (the bundle) and the plots as artefacts
    folder = {Path(f.path).name for f in client.list_artifacts(run_id, "run")}
    assert {"graft.json", "model.safetensors", "report.json", "metrics.csv", "tensorboard"} <= folder
    assert {Path(f.path).name for f in client.list_artifacts(run_id, "images")} >= {
        "confusion.png",
        "curves.png",
    }
    bundle = Path(client.download_artifacts(run_id, "run/graft.json", str(out.parent)))
    assert bundle.read_bytes() == (out / "graft.json").read_bytes()


# what a user runs afterwards, in the same folder, with no MLflow settings: MLflow's own readers
READ_BACK = """
import json, sys
import mlflow
from mlflow.tracking import MlflowClient

found = mlflow.search_runs(experiment_names=["graft"])  # a DataFrame, as users call it
everywhere = mlflow.search_runs(search_all_experiments=True, output_format="list")
client = MlflowClient()
run = client.get_run(found.loc[0, "run_id"])
bundle = client.download_artifacts(run.info.run_id, "run/graft.json", sys.argv[1])
print(json.dumps({
    "uri": mlflow.get_tracking_uri(),
    "names": list(found["tags.mlflow.runName"]),
    "everywhere": [r.info.run_name for r in everywhere],
    "status": run.info.status,
    "params": run.data.params,
    "metrics": run.data.metrics,
    "losses": len(client.get_metric_history(run.info.run_id, "probe/loss")),
    "run": sorted(f.path for f in client.list_artifacts(run.info.run_id, "run")),
    "images": sorted(f.path for f in client.list_artifacts(run.info.run_id, "images")),
    "bundle": open(bundle).read(),
}))
"""


def test_mlflow_clients_in_a_fresh_process_with_no_settings_read_the_run_back(tmp_path):
    """`graft train --log-to mlflow` and then MLflow's own client, each in a fresh process in the
    same folder with no MLFLOW_* variables: the run, its params, metrics and artefacts are there
    (MLflow 3 refuses to read a file store it was not told to allow)."""
    train = make_image_folder(tmp_path / "train", per_class=6, seed=0)
    test = make_image_folder(tmp_path / "test", per_class=2, seed=1)
    env = _without_mlflow_settings(dict(os.environ))
    args = [a if a != "finetune" else "linear" for a in IMAGE_ARGS]  # the probe alone: seconds
    argv = ["train", str(train), "--test", str(test), *args, "--out", "runs/pets", "--log-to", "mlflow"]
    trained = subprocess.run(
        [sys.executable, "-m", "graft", *argv], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "tracker failed" not in trained.stderr
    (tmp_path / "downloads").mkdir()
    read = subprocess.run(
        [sys.executable, "-c", READ_BACK, "downloads"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert read.returncode == 0, read.stderr[-3000:]
    got = json.loads(read.stdout.strip().splitlines()[-1])
    report = json.loads((tmp_path / "runs" / "pets" / "report.json").read_text())
    assert got["uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"  # MLflow's own default
    assert got["names"] == got["everywhere"] == ["pets"] and got["status"] == "FINISHED"
    assert got["params"]["config.log_to"] == "mlflow" and got["params"]["plan.strategy"] == "linear"
    assert got["metrics"]["test/accuracy"] == pytest.approx(report["test"]["accuracy"])
    assert got["metrics"]["val/accuracy"] == pytest.approx(report["validation"]["accuracy"])
    assert got["losses"] > 0
    assert {"run/graft.json", "run/model.safetensors", "run/report.json"} <= set(got["run"])
    assert "images/confusion.png" in got["images"]
    assert got["bundle"] == (tmp_path / "runs" / "pets" / "graft.json").read_text()


def test_a_run_folder_that_holds_the_mlflow_store_is_logged_without_it(tmp_path):
    """`--out .` in the folder MLflow logs to: the run folder is logged, its database and
    artefact store (./mlflow.db, ./mlruns) are not logged into themselves."""
    here = tmp_path / "here"
    here.mkdir()
    with _mlflow_store(here) as uri:
        tracker = trackers.MlflowTracker(here, TrainConfig(data="d", log_to="mlflow"))
        (here / "graft.json").write_text("{}")
        tracker.close(here, "FINISHED")
    client = MlflowClient(tracking_uri=uri)
    logged = {Path(f.path).name for f in client.list_artifacts(tracker.run_id, "run")}
    assert (here / "mlflow.db").is_file() and (here / "mlruns").is_dir()
    assert logged == {"graft.json"}


def test_mlflow_tracking_uri_is_honoured(tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for folder in (here, elsewhere):
        folder.mkdir()
    uri = f"sqlite:///{elsewhere / 'runs.db'}"
    with _mlflow_store(here), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
        tracker = trackers.MlflowTracker(here / "run", TrainConfig(data="d", log_to="mlflow"))
        tracker.close(here / "run", "FAILED")
    assert not (here / "mlflow.db").exists()
    found = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert found.info.run_name == "run" and found.info.status == "FAILED"
    assert MlflowClient(tracking_uri=uri).get_experiment(found.info.experiment_id).name == "mine"


# --------------------------------------------------------------------------- CSV


def _csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("which", RUNS)
def test_metrics_csv_is_tidy_rows_of_every_step_epoch_and_final_number(which, request):
    out, _, report = request.getfixturevalue(which)
    rows = _csv_rows(out)
    assert list(rows[0]) == ["phase", "epoch", "step", "name", "value"]
    assert list(dict.fromkeys(r["phase"] for r in rows)) == [*_phases(report), "val", "test"]
    tuned = [r for r in rows if r["phase"] == "finetune"]
    losses = [r for r in tuned if r["name"] == "loss"]
    assert [int(r["step"]) for r in losses] == list(range(1, _steps(report) + 1))
    history = _tuned_history(report)
    epochs = [r for r in tuned if r["name"] == "val_loss"]
    assert [int(r["epoch"]) for r in epochs] == [row["epoch"] for row in history]
    assert [float(r["value"]) for r in epochs] == [row["val_loss"] for row in history]  # repr: exact
    test = {r["name"]: float(r["value"]) for r in rows if r["phase"] == "test"}
    assert test["accuracy"] == report["test"]["accuracy"] and "n" not in test  # n: a count, not a metric
    with open(out / "params.csv", newline="") as f:
        params = dict(csv.reader(f))
    assert params["config.log_to"] == ALL and params["plan.strategy"] == "finetune"


# --------------------------------------------------------------------------- errors and edges


def test_a_missing_extra_is_one_line_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    out = tmp_path / "run"
    code = main(["train", str(tmp_path / "no-such-data"), "--log-to", "csv,tensorboard", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    extra = "pip install 'graft-learn[tensorboard]'"
    assert err == f"graft: error: --log-to tensorboard needs the tensorboard extra: {extra}"
    assert not out.exists()
    # the client without what MLflow's default SQLite store needs is the extra half installed
    needs = r"^log_to=mlflow needs the mlflow extra: pip install 'graft-learn\[mlflow\]'$"
    for missing in ("sqlalchemy", "mlflow"):
        monkeypatch.setitem(sys.modules, missing, None)
        with pytest.raises(ConfigError, match=needs):
            graft.Classifier(log_to="mlflow", out=str(out)).fit(str(tmp_path / "no-such-data"))


def test_log_to_names_are_checked_and_normalised():
    assert TrainConfig(data="d", log_to=" TensorBoard, csv,csv").log_to == "tensorboard,csv"
    assert TrainConfig(data="d", log_to=("mlflow",)).log_to == "mlflow"
    assert TrainConfig(data="d", log_to="").log_to is None
    with pytest.raises(ConfigError, match="unknown --log-to 'wandb'; choose from tensorboard, mlflow, csv"):
        TrainConfig(data="d", log_to="csv,wandb")


def test_a_run_that_fails_ends_its_mlflow_run_as_failed(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", per_class=4, seed=0)

    def broken(job, probe=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(recipes, "train", broken)
    config = TrainConfig(
        data=str(data),
        backbone="timm/test_efficientnet",
        weights="random",
        image_size=32,
        strategy="linear",
        out=str(tmp_path / "run"),
        log_to="mlflow",
    )
    with _mlflow_store(tmp_path) as uri:
        with pytest.raises(RuntimeError, match="boom"):
            run(config, log=lambda line: None)
        _, found = _mlflow_run(uri, tmp_path / "run")
    assert found.info.status == "FAILED"


def test_numbers_logged_before_the_run_folder_is_known_wait_for_it(tmp_path):
    """`auto`'s probe runs before the run folder is named: its numbers are kept, then written."""
    tracking = trackers.Tracking(["csv"])
    tracking.log([trackers.Record("probe", 1, 1, "loss", 0.5, "step")])
    assert not (tmp_path / "run").exists()
    tracking.open(tmp_path / "run", TrainConfig(data="d", log_to="csv"))
    tracking.log([trackers.Record("probe", 1, 2, "loss", 0.25, "step")])
    rows = _csv_rows(tmp_path / "run")
    assert [(r["step"], r["value"]) for r in rows] == [("1", "0.5"), ("2", "0.25")]


def test_only_rank_0_logs(monkeypatch):
    monkeypatch.setattr(ranks, "is_main", lambda: False)
    tracking = trackers.Tracking(["csv", "tensorboard"])
    assert not tracking.on and tracking.callbacks("probe") == []


class _Collect(trackers.Tracking):
    def __init__(self) -> None:
        super().__init__(["csv"])
        self.calls: list[list[trackers.Record]] = []

    def log(self, records):
        self.calls.append(list(records))


def test_step_losses_are_read_in_batches_and_match_the_loop():
    """With every=3, 7 steps of one epoch reach the trackers as 3 + 3 + 1 steps, then the epoch's row."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(7)]
    tracking = _Collect()
    spy = []

    class Spy(Callback):
        def on_step_end(self, loop, loss):
            spy.append(float(loss))

    callbacks = [trackers.TrackSteps(tracking, "probe", every=3), Spy()]
    history = fit(
        model,
        [(HEAD, list(model.parameters()))],
        lambda e: Stage({HEAD: 1.0}),
        lambda e: batches,
        7,
        LoopConfig(epochs=1, lr=1e-2),
        callbacks=callbacks,
    )
    assert [len(call) for call in tracking.calls] == [
        6,
        6,
        2,
        2,
    ]  # loss + lr a step; train_loss, train_seconds
    steps = [r for call in tracking.calls[:3] for r in call if r.name == "loss"]
    assert [r.step for r in steps] == list(range(1, 8)) and [r.value for r in steps] == pytest.approx(spy)
    assert {r.name: r.value for r in tracking.calls[3]}["train_loss"] == pytest.approx(
        history[0]["train_loss"]
    )


def test_a_tracker_that_fails_is_dropped_with_a_warning_and_the_run_finishes(tmp_path, monkeypatch):
    """A tracker error (a server out of reach, a full disk) costs the log, not the run: one
    warning naming the tracker, the others keep logging, the bundle is written."""

    def broken(self, records):
        raise OSError("No space left on device")

    monkeypatch.setattr(trackers.CsvTracker, "scalars", broken)
    train = make_image_folder(tmp_path / "train", per_class=6, seed=0)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"the csv tracker failed \(No space left on device\)"):
        argv = ["train", str(train), *IMAGE_ARGS, "--out", str(out), "--log-to", "csv,tensorboard"]
        code = _quiet_main(argv)
    assert code == 0 and (out / "model.safetensors").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
