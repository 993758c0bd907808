"""End to end: `graft train` / runner.run on tiny synthetic image folders, the run folder, the feature
cache, the bundle (graft.load) and the predict / eval commands."""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_image_folder
from PIL import Image
from safetensors.torch import load_file

import graft
from graft.cli import main
from graft.config import TrainConfig
from graft.runner import RunResult, run

RUN_FILES = {"model.safetensors", "graft.json", "report.json", "confusion.png", "curves.png"}


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    run_dir: Path
    warnings: list[str]

    @property
    def json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def report(self) -> dict:
        return json.loads((self.run_dir / "report.json").read_text())


def _cli(argv: list[str], run_dir: Path) -> CliRun:
    out, err = io.StringIO(), io.StringIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        warnings.simplefilter("always")
        code = main(argv)
    return CliRun(code, out.getvalue(), err.getvalue(), run_dir, [str(w.message) for w in caught])


def _jpeg_bytes(size: int = 96) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    return {
        "data": make_image_folder(root / "data", per_class=12, seed=0),
        "test": make_image_folder(root / "holdout", per_class=6, seed=1),
        "runs": root / "runs",
        "cache": root / "feature-cache",
    }


@pytest.fixture(scope="module")
def trained(folders) -> RunResult:
    """runner.run on data + a test folder, 64 px, with a cache folder shared with `cli_trained`;
    30 epochs given (the default would stretch the head's schedule to 500 steps: seconds of
    per-epoch evaluation that these tests do not need)."""
    config = TrainConfig(
        data=str(folders["data"]),
        test=str(folders["test"]),
        image_size=64,
        epochs=30,
        out=str(folders["runs"] / "api"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(folders["cache"]))
        return run(config, log=lambda line: None)


@pytest.fixture(scope="module")
def cli_trained(folders, trained) -> CliRun:
    """The same data through the CLI with another --lr: its features come from `trained`'s cache."""
    run_dir = folders["runs"] / "cli"
    argv = ["train", str(folders["data"]), "--test", str(folders["test"]), "--image-size", "64"]
    argv += ["--out", str(run_dir), "--lr", "0.003", "--epochs", "30", "--json"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(folders["cache"]))
        mp.setattr(warnings, "formatwarning", warnings.formatwarning)
        return _cli(argv, run_dir)


@pytest.fixture(scope="module")
def corrupt_run(tmp_path_factory) -> CliRun:
    """A CLI run, without --test, on data holding a zero-byte and a truncated JPEG."""
    root = tmp_path_factory.mktemp("corrupt")
    data = make_image_folder(root / "data", per_class=12, seed=2)
    (data / "red" / "zero-bytes.jpg").write_bytes(b"")
    whole = _jpeg_bytes()
    (data / "green" / "truncated.jpg").write_bytes(whole[: len(whole) * 6 // 10])  # header intact
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(warnings, "formatwarning", warnings.formatwarning)
        argv = ["train", str(data), "--image-size", "64", "--epochs", "30", "--out", str(run_dir), "--json"]
        return _cli(argv, run_dir)


# --------------------------------------------------------------------------- train


def test_cli_train_prints_json_and_writes_the_run_folder(cli_trained, folders):
    """`graft train ... --test T --json` exits 0, prints the summary JSON last, writes the run folder."""
    assert cli_trained.code == 0, cli_trained.stderr
    summary = cli_trained.json
    assert {"accuracy", "macro_f1", "seconds", "run_dir", "test_accuracy", "test_macro_f1"} <= set(summary)
    assert summary["run_dir"] == str(cli_trained.run_dir)
    assert isinstance(summary["seconds"], float | int) and summary["seconds"] > 0
    assert "epoch" in cli_trained.stderr  # progress goes to stderr, keeping stdout parseable
    assert {p.name for p in cli_trained.run_dir.iterdir()} >= RUN_FILES
    meta = json.loads((cli_trained.run_dir / "graft.json").read_text())
    assert {"backbone", "classes", "preprocessing", "recipe", "metrics", "versions"} <= set(meta)
    assert meta["backbone"]["name"] == "efficientnet_lite0"
    assert meta["classes"] == list(CLASSES)
    assert meta["preprocessing"]["input_size"] == 64
    assert meta["recipe"]["lr"] == 0.003
    assert meta["recipe"]["test"] == str(folders["test"])
    assert meta["metrics"]["test"]["accuracy"] == summary["test_accuracy"]
    assert meta["metrics"]["test"]["n"] == 18
    assert {"graft", "torch", "timm"} <= set(meta["versions"])


def test_cli_train_without_test_folder(corrupt_run):
    """Without --test the summary has validation metrics only."""
    assert corrupt_run.code == 0, corrupt_run.stderr
    summary = corrupt_run.json
    assert {"accuracy", "macro_f1", "seconds", "run_dir"} <= set(summary)
    assert "test_accuracy" not in summary
    assert corrupt_run.report["test"] is None
    assert {p.name for p in corrupt_run.run_dir.iterdir()} >= RUN_FILES


def test_training_learns_the_easy_synthetic_classes(trained, cli_trained, corrupt_run):
    """Colour + pattern classes are easy for ImageNet features: validation and test accuracy > 0.8."""
    report = trained.report
    assert report["validation"]["accuracy"] > 0.8
    assert report["test"]["accuracy"] > 0.8
    assert report["test"]["n"] == 18
    assert report["data"]["train"] + report["data"]["val"] == 36
    assert report["history"][-1]["train_loss"] < report["history"][0]["train_loss"]
    assert cli_trained.json["test_accuracy"] > 0.8
    assert corrupt_run.json["accuracy"] > 0.8


def test_corrupt_files_are_skipped_reported_and_warned(corrupt_run):
    """Zero-byte and truncated JPEGs are skipped: training succeeds, report and warnings name them."""
    assert corrupt_run.code == 0, corrupt_run.stderr
    report = corrupt_run.report
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped_files"]}
    assert set(skipped) == {"zero-bytes.jpg", "truncated.jpg"}
    assert all(skipped.values())  # each with a reason
    assert corrupt_run.json["skipped_files"] == 2
    for name in skipped:
        assert any(name in w for w in corrupt_run.warnings), corrupt_run.warnings
    # every readable image was used, and only those
    assert report["data"]["train"] + report["validation"]["n"] == 36


def test_class_without_readable_images_is_a_one_line_error(tmp_path, capsys):
    """A class folder holding only unreadable files: exit code 2, one error line naming it, no traceback."""
    data = make_image_folder(tmp_path / "data", per_class=4, seed=3)
    for f in (data / "red").iterdir():
        f.unlink()
    (data / "red" / "broken.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="broken.jpg"):
        code = main(["train", str(data), "--image-size", "64", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("graft: error:")]
    assert len(errors) == 1, err
    assert str(data / "red") in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_second_run_reuses_cached_features(trained, cli_trained):
    """Another --lr on the same data hits the feature cache: no extraction time at all."""
    first = trained.report["timing"]
    assert first["feature_cache_hit"] is False
    assert first["feature_extraction_seconds"] > 0
    assert cli_trained.json["feature_cache_hit"] is True
    second = cli_trained.report["timing"]
    assert second["feature_cache_hit"] is True
    assert second["feature_extraction_seconds"] == 0
    assert "from the cache" in cli_trained.stderr
    assert cli_trained.report["config"]["lr"] != trained.report["config"]["lr"]


def test_offline_cli_with_uncached_torchvision_backbone(tmp_path, capsys, monkeypatch):
    """`--backbone resnet18` offline with no cached weights: exit 2 fast, one stderr line naming the file."""
    data = make_image_folder(tmp_path / "data", per_class=10, seed=4)  # 3 val images: stratified
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    code = main(["train", str(data), "--backbone", "resnet18"])
    assert time.perf_counter() - started < 15
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "resnet18-f37072fd.pth" in lines[0]
    assert "--weights" in lines[0]
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- bundle and predictor


def _holdout_images(folders, ext: str = "png") -> list[Path]:
    return sorted(folders["test"].glob(f"*/*.{ext}"))


@pytest.mark.precision
def test_bundle_round_trip_matches_the_in_memory_model(trained, folders):
    """graft.load(run) gives the in-memory model's probabilities (to 1e-5) and the same labels."""
    paths = _holdout_images(folders, "png") + _holdout_images(folders, "jpg")
    predictor = graft.load(trained.run_dir, device="cpu", precision="fp32")
    x = predictor.preprocess(paths)
    assert x.dtype == np.float32
    assert x.shape == (len(paths), 3, 64, 64)
    with torch.inference_mode():
        expected = trained.model.eval()(torch.from_numpy(x)).softmax(1).numpy()
    got = predictor.predict_proba(paths)
    assert got.shape == (len(paths), 3)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    labels = predictor.predict(paths)
    assert labels == [CLASSES[i] for i in expected.argmax(1)]
    truth = [p.parent.name for p in paths]
    assert np.mean([a == b for a, b in zip(labels, truth, strict=True)]) > 0.8


def test_predict_accepts_paths_pil_images_and_arrays(trained, folders):
    """A path, the PIL image and the uint8 array of the same picture get the same prediction."""
    path = _holdout_images(folders, "png")[0]
    image = Image.open(path).convert("RGB")
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8
    predictor = graft.load(trained.run_dir, device="cpu")
    from_path = predictor.predict_proba([path])
    np.testing.assert_allclose(predictor.predict_proba([str(path)]), from_path, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba([image]), from_path, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba([pixels]), from_path, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(pixels), from_path, atol=1e-6)  # one bare array
    assert predictor.predict([path, image, pixels]) == [path.parent.name] * 3


def test_predict_accepts_a_single_pil_image(trained, folders):
    """Like one path or one array, one bare PIL image is one input."""
    path = _holdout_images(folders, "png")[0]
    predictor = graft.load(trained.run_dir, device="cpu")
    image = Image.open(path).convert("RGB")
    np.testing.assert_allclose(predictor.predict_proba(image), predictor.predict_proba([path]), atol=1e-6)


@pytest.mark.precision
def test_bundle_loads_without_the_packaged_weights(trained, folders, monkeypatch):
    """Loading a bundle builds the architecture only: it works even if the pretrained file is gone."""
    from graft.backbones import BackboneError, _vision, create_backbone

    monkeypatch.setattr(_vision, "packaged_lite0_file", lambda: None)
    with pytest.raises(BackboneError):
        create_backbone("efficientnet_lite0")  # the pretrained weights really are unavailable now
    predictor = graft.load(trained.run_dir, device="cpu", precision="fp32")
    paths = _holdout_images(folders)[:3]
    with torch.inference_mode():
        expected = trained.model(torch.from_numpy(predictor.preprocess(paths))).softmax(1).numpy()
    np.testing.assert_allclose(predictor.predict_proba(paths), expected, atol=1e-5, rtol=0)


def test_cli_predict_top_k(trained, folders, capsys):
    """`graft predict RUN a b --top-k 2 --json`: two predictions per input, sorted by probability."""
    paths = [str(p) for p in _holdout_images(folders)[:2]]
    assert main(["predict", str(trained.run_dir), *paths, "--top-k", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert [row["input"] for row in rows] == paths
    for row in rows:
        preds = row["predictions"]
        assert len(preds) == 2
        assert preds[0]["probability"] >= preds[1]["probability"]
        assert {p["label"] for p in preds} <= set(CLASSES)
        assert len({p["label"] for p in preds}) == 2
    assert rows[0]["predictions"][0]["label"] == Path(paths[0]).parent.name


def test_cli_predict_top_k_is_capped_at_the_number_of_classes(trained, folders, capsys):
    """--top-k larger than the class count lists every class once."""
    path = str(_holdout_images(folders)[0])
    assert main(["predict", str(trained.run_dir), path, "--top-k", "10", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert sorted(p["label"] for p in row["predictions"]) == sorted(CLASSES)
    assert sum(p["probability"] for p in row["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_cli_eval(trained, folders, capsys):
    """`graft eval RUN DIR --json` scores the saved model like the run's own test evaluation."""
    assert main(["eval", str(trained.run_dir), str(folders["test"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 18
    assert metrics["accuracy"] == pytest.approx(trained.report["test"]["accuracy"])
    assert metrics["skipped_files"] == []


def test_bundle_is_safetensors_only(trained, cli_trained):
    """No pickle-based file in a run folder; graft.json is plain JSON; the weights load as safetensors."""
    for run_dir in (trained.run_dir, cli_trained.run_dir):
        suffixes = {p.suffix for p in run_dir.rglob("*") if p.is_file()}
        assert not suffixes & {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}
        meta = json.loads((run_dir / "graft.json").read_text())
        assert isinstance(meta, dict)
        state = load_file(str(run_dir / "model.safetensors"))
        assert set(state) == set(trained.model.state_dict())
