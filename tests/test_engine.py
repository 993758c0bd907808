"""The CPU inference engine (graft.engine) and draft-mode JPEG decoding: faster, never different."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hide_module
from PIL import Image
from torch import nn

from graft.runtime import engine as engine_mod
from graft.runtime.engine import MIN_INPUTS_TO_EXPORT, PARITY_TOLERANCE, choose_engine

pytest.importorskip("onnxruntime")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
    ).eval()


def batch(n: int = 16, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_forced_onnxruntime_matches_torch_and_says_so():
    module, x = small_cnn(), batch()
    forward, choice = choose_engine(module, x, n_inputs=10, engine="onnxruntime")
    assert choice.name == "onnxruntime"
    assert choice.max_abs_diff is not None and choice.max_abs_diff <= PARITY_TOLERANCE
    with torch.inference_mode():
        want = module(x).flatten(1)
    torch.testing.assert_close(forward(x), want, atol=1e-4, rtol=1e-4)


def test_small_job_without_a_cached_export_stays_on_torch():
    forward, choice = choose_engine(small_cnn(), batch(), n_inputs=MIN_INPUTS_TO_EXPORT - 1)
    assert choice.name == "torch"
    assert "do not repay" in choice.reason


def test_parts_of_a_big_extraction_run_on_its_engine_chosen_once(monkeypatch: pytest.MonkeyPatch):
    """--time-budget's timing sample and chunks are small parts of one extraction: inside
    `part_of`, a part of 8 inputs gets the engine a job of all of them would (ONNX Runtime here,
    where 8 alone stays on PyTorch), chosen once: later parts reuse it without another race."""
    module, x = small_cnn(), batch()
    races: list[int] = []
    real_race = engine_mod._race
    monkeypatch.setattr(engine_mod, "_race", lambda *a, **k: races.append(1) or real_race(*a, **k))
    monkeypatch.setattr(engine_mod, "MIN_SPEEDUP", 0.0)  # the choice, not this machine's speed
    with engine_mod.part_of(10 * MIN_INPUTS_TO_EXPORT):
        first, choice = choose_engine(module, x, n_inputs=8)
        again, same = choose_engine(module, x, n_inputs=8)
    assert choice.name == "onnxruntime" and (again, same) == (first, choice) and len(races) == 1
    with torch.no_grad():
        module[0].weight.mul_(2)  # other weights: no cached export
    _, alone = choose_engine(module, x, n_inputs=8)
    assert alone.name == "torch" and "do not repay" in alone.reason  # outside it, as before


def test_export_is_cached_by_weights_and_reused(tmp_path: Path):
    module, x = small_cnn(), batch()
    _, first = choose_engine(module, x, n_inputs=10, engine="onnxruntime")
    assert first.export_seconds > 0
    exported = list((Path(engine_mod._cache_path(module, x)).parent).glob("*.onnx"))
    assert len(exported) == 1
    # a small job now uses the cached graph instead of refusing the export cost
    _, again = choose_engine(module, x, n_inputs=1, engine="onnxruntime")
    assert again.export_seconds == 0.0
    # other weights are another graph
    with torch.no_grad():
        module[0].weight.add_(1.0)
    assert engine_mod._cache_path(module, x) != exported[0]


def test_wrong_outputs_fall_back_to_torch(monkeypatch: pytest.MonkeyPatch):
    def off_by_one(session):
        real = engine_mod.__dict__["_ort_forward_real"](session)
        return lambda x: real(x) + 1.0

    monkeypatch.setitem(engine_mod.__dict__, "_ort_forward_real", engine_mod._ort_forward)
    monkeypatch.setattr(engine_mod, "_ort_forward", off_by_one)
    forward, choice = choose_engine(small_cnn(), batch(), n_inputs=1000, engine="onnxruntime")
    assert choice.name == "torch"
    assert "differs from fp32 PyTorch" in choice.reason


def test_an_unexportable_module_falls_back_to_torch():
    class Unexportable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(x.numpy().mean(axis=(2, 3))) * self.scale  # leaves the graph

    # traced, the numpy call is frozen into a constant: a graph without an input
    _, choice = choose_engine(Unexportable(), batch(), n_inputs=1000)
    assert (choice.name, choice.reason) == ("torch", "the exported graph does not take the input")


def test_an_exporter_error_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch):
    def refuse(module, example):
        message = "Exporting the operator 'aten::svd' to ONNX opset version 17 is not supported."
        raise RuntimeError(message + "\nmore lines")

    monkeypatch.setattr(engine_mod, "_export", refuse)
    _, choice = choose_engine(small_cnn(), batch(), n_inputs=1000)
    assert choice.name == "torch"
    assert choice.reason == (
        "ONNX export failed (RuntimeError: Exporting the operator 'aten::svd' to ONNX opset version 17 "
        "is not supported.)"
    )


def test_explicit_torch_and_missing_runtime(monkeypatch: pytest.MonkeyPatch):
    _, choice = choose_engine(small_cnn(), batch(), n_inputs=1000, engine="torch")
    assert (choice.name, choice.reason) == ("torch", "--engine torch")
    hide_module(monkeypatch, "onnxruntime")
    _, choice = choose_engine(small_cnn(), batch(), n_inputs=1000)
    assert choice.name == "torch" and "graft-learn[onnx]" in choice.reason


def test_image_extraction_on_onnxruntime_matches_torch(tmp_path: Path):
    from graft.backbones import create_backbone
    from graft.modalities import get_modality

    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    image = get_modality("image")
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    prep = backbone.preprocessing.with_size(64)
    common = dict(flip=True, batch_size=4, desc="test")
    plain = image.encode(backbone, prep, sources, engine="torch", **common)
    fast = image.encode(backbone, prep, sources, engine="onnxruntime", **common)
    assert plain.engine["name"] == "torch" and fast.engine["name"] == "onnxruntime"
    np.testing.assert_allclose(fast.values, plain.values, atol=1e-3 * max(1, np.abs(plain.values).max()))


# --------------------------------------------------------------------------- draft-mode JPEG decoding


def photo(path: Path, size: tuple[int, int]) -> Path:
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    y = np.linspace(0, 255, size[1], dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(x[None, :], y[:, None], (x[None, :] + y[:, None]) / 2), -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=90)
    return path


def test_large_jpeg_decodes_at_a_reduced_scale_never_below_the_resize(tmp_path: Path):
    from graft.data.images import load_rgb

    path = photo(tmp_path / "big.jpg", (1200, 900))
    assert load_rgb(path).size == (1200, 900)
    assert load_rgb(path, min_side=256).size == (600, 450)  # 1/4 would be 225 < 256
    assert load_rgb(path, min_side=100).size == (150, 113)  # 1/8: short side 112.5 rounds up
    assert load_rgb(path, min_side=500).size == (1200, 900)  # half would be 450 < 500
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert load_rgb(png, min_side=100).size == (1200, 900)  # only JPEGs have a DCT scale


def test_draft_decoding_changes_the_network_input_by_little(tmp_path: Path):
    from graft.backbones import Preprocessing
    from graft.data.pipeline import iterate_batches

    paths = [photo(tmp_path / f"p{i}.jpg", (1000 + 40 * i, 750)) for i in range(3)]
    prep = Preprocessing(input_size=224, crop_pct=0.875)  # resize 256
    full = next(iterate_batches(paths, prep, workers=0)).images.float()
    draft = next(iterate_batches(paths, prep, workers=0, decode_size=256)).images.float()
    assert full.shape == draft.shape == (3, 3, 224, 224)
    assert (full - draft).abs().mean() < 2.0  # of 255 levels


@pytest.mark.parametrize("shape", [(32, 32), (375, 500), (500, 375), (77, 301)])
def test_pillow_eval_geometry_matches_torchvisions(shape: tuple[int, int]):
    """resize_center_crop (Pillow, no torch) gives torchvision's Resize(antialias) + CenterCrop
    pixels within rounding: the sizes and crop offsets are the same, the kernels nearly so."""
    from torchvision.transforms import v2

    from graft.data.images import resize_center_crop

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8))
    bicubic = v2.InterpolationMode.BICUBIC
    tv = v2.Compose(
        [v2.PILToTensor(), v2.Resize(256, interpolation=bicubic, antialias=True), v2.CenterCrop(224)]
    )
    want = tv(img).permute(1, 2, 0).numpy().astype(int)
    got = resize_center_crop(img, 256, 224, "bicubic").astype(int)
    assert got.shape == want.shape == (224, 224, 3)
    assert np.abs(got - want).max() <= 2 and np.abs(got - want).mean() < 0.05


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    from conftest import make_image_folder

    from graft.config import TrainConfig
    from graft.runner import run

    root = tmp_path_factory.mktemp("engine-run")
    data = make_image_folder(root / "data", per_class=8, seed=0)
    config = TrainConfig(
        data=str(data),
        strategy="linear",
        image_size=32,
        epochs=3,
        out=str(root / "run"),
        engine="onnxruntime",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        return run(config, log=lambda line: None).run_dir


@pytest.mark.precision
def test_report_records_the_extraction_engine(image_run: Path):
    import json

    engine = json.loads((image_run / "report.json").read_text())["timing"]["features_engine"]
    assert engine["name"] == "onnxruntime"
    assert engine["max_abs_diff"] <= PARITY_TOLERANCE
    assert engine["decoder"]["reason"] == "cpu (no CUDA)"  # the GPU JPEG-decode race, not run here


@pytest.mark.precision
def test_predictor_on_onnxruntime_predicts_what_torch_does(image_run: Path):
    import graft

    images = sorted((image_run.parent / "data").rglob("*.png"))[:10]
    assert images
    on_torch = graft.load(image_run, engine="torch", precision="fp32")  # like with like: ONNX is fp32
    on_ort = graft.load(image_run, engine="onnxruntime", precision="fp32")
    np.testing.assert_allclose(on_ort.predict_proba(images), on_torch.predict_proba(images), atol=1e-4)
    assert on_ort.engine_choice["name"] == "onnxruntime"
    assert on_torch.engine_choice is None  # torch was asked for: nothing to choose


def test_a_cpu_prediction_on_onnxruntime_loads_no_training_module(image_run: Path):
    """Prediction stands below training: graft.load, the engine's export and race on a CPU and its
    cache folder load no graft.training module (checked in a fresh process)."""
    import json
    import subprocess
    import sys

    images = [str(p) for p in sorted((image_run.parent / "data").rglob("*.png"))]
    code = (
        "import sys, json, graft; "
        "m = graft.load(sys.argv[1], device='cpu', engine='onnxruntime'); m.predict(sys.argv[2:]); "
        "print(json.dumps({'engine': m.engine_choice['name'], "
        "'training': sorted(n for n in sys.modules if n.startswith('graft.training'))}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(image_run), *images], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"engine": "onnxruntime", "training": []}


# --------------------------------------------------------------------------- predicting without torch


@pytest.fixture(scope="module")
def exported_run(image_run: Path, tmp_path_factory) -> Path:
    import shutil

    from graft.export import export

    run = tmp_path_factory.mktemp("exported-run") / "run"
    shutil.copytree(image_run, run)
    export(run, "onnx", None, samples=8, log=lambda line: None)
    assert (run / "model.onnx").is_file()
    return run


@pytest.mark.precision
def test_an_exported_run_predicts_without_torch_what_torch_predicts(exported_run: Path, image_run: Path):
    import graft
    from graft.predict.light import load_exported

    fast = load_exported(exported_run)
    assert fast is not None
    images = [str(p) for p in sorted((image_run.parent / "data").rglob("*.png"))][:12]
    assert images
    want = graft.load(exported_run, engine="torch", precision="fp32").predict_proba(images)
    proba, failures = fast.predict_proba_or_skip([*images, "missing.png"])
    assert set(failures) == {len(images)} and "missing.png" in failures[len(images)]
    np.testing.assert_allclose(proba[: len(images)], want, atol=1e-4)
    assert np.isnan(proba[len(images)]).all()


def test_graft_predict_from_an_export_never_imports_torch(exported_run: Path, image_run: Path):
    import json
    import subprocess
    import sys

    image = str(next((image_run.parent / "data").rglob("*.png")))
    code = (
        "import sys, json; from graft.cli import main; "
        "rc = main(['predict', sys.argv[1], sys.argv[2], '--json']); "
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code, str(exported_run), image], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()
    )
    assert json.loads(out[-1]) == {"rc": 0, "torch": False}


def test_a_stale_export_is_ignored(exported_run: Path, tmp_path: Path):
    """model.onnx left from an earlier run in the folder: other weights, so the torch path runs."""
    import shutil

    from conftest import make_image_folder

    from graft.config import TrainConfig
    from graft.predict.light import load_exported
    from graft.runner import run

    data = make_image_folder(tmp_path / "data", per_class=8, seed=1)
    out = str(tmp_path / "run")
    config = TrainConfig(data=str(data), strategy="linear", image_size=32, epochs=2, out=out)
    retrained = run(config, log=lambda line: None).run_dir
    assert load_exported(retrained) is None  # nothing exported
    shutil.copy(exported_run / "model.onnx", retrained / "model.onnx")
    assert load_exported(retrained) is None  # exported from other weights


# --------------------------------------------------------------------------- every task, without torch

TASK_COLUMNS = {"multi": "labels", "regression": "brightness"}


@pytest.fixture(scope="module", params=sorted(TASK_COLUMNS))
def exported_task_run(request, tmp_path_factory) -> tuple[Path, list[str]]:
    """An exported image run of a multi-label or regression task, and images to predict."""
    import csv

    from conftest import synthetic_image

    from graft.cli import main
    from graft.export import export

    task = request.param
    root = tmp_path_factory.mktemp(f"exported-{task}")
    data, rng, rows = root / "data", np.random.default_rng(0), []
    data.mkdir()
    for i in range(45):
        colour = ["red", "green", "blue"][i % 3]
        pixels = synthetic_image(colour, rng)
        Image.fromarray(pixels).save(data / f"{i:03d}.png")
        labels = f"{colour}|warm" if colour == "red" else colour
        rows.append([f"{i:03d}.png", labels, f"{pixels.mean() / 255:.4f}"])
    with open(data / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "labels", "brightness"], *rows])
    out = root / "run"
    argv = ["train", str(data), "--label-column", TASK_COLUMNS[task], "--task", task, "--strategy", "linear"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        assert main([*argv, "--image-size", "32", "--epochs", "20", "--out", str(out), "--json"]) == 0
    export(out, "onnx", None, samples=8, log=lambda line: None)
    return out, [str(data / f"{i:03d}.png") for i in range(6)]


def _predict_without_torch(run: Path, images: list[str], *flags: str) -> tuple[list[str], bool]:
    """`graft predict` in a fresh interpreter: its stdout lines and whether torch was imported."""
    import json
    import subprocess
    import sys

    code = (
        "import sys, json; from graft.cli import main; "
        "rc = main(['predict', *sys.argv[1:]]); "
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))"
    )
    argv = [sys.executable, "-c", code, str(run), *images, *flags]
    lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    done = json.loads(lines[-1])
    assert done["rc"] == 0
    return lines[:-1], done["torch"]


def test_multi_label_and_regression_exports_predict_without_torch_as_torch_does(exported_task_run, capsys):
    """The torch-free path of `graft predict` gives each task's rows (labels over their thresholds
    and every probability; the numbers in the data's units) as the PyTorch path prints them."""
    import json

    import graft
    from graft.cli import main
    from graft.errors import ConfigError
    from graft.predict.light import load_exported

    run, images = exported_task_run
    fast = load_exported(run)
    assert fast is not None and fast.task.name == json.loads((run / "graft.json").read_text())["task"]["name"]
    lines, imported = _predict_without_torch(run, images, "--json")
    assert not imported
    rows = json.loads(lines[-1])["predictions"]
    capsys.readouterr()
    assert main(["predict", str(run), *images, "--json", "--engine", "torch", "--precision", "fp32"]) == 0
    want = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert [r["input"] for r in rows] == images and not any("error" in r for r in rows)
    assert rows == [_close(r) for r in want]
    printed, _ = _predict_without_torch(run, images)
    assert main(["predict", str(run), *images, "--engine", "torch", "--precision", "fp32"]) == 0
    by_torch = capsys.readouterr().out.strip().splitlines()
    answer = graft.load(run, engine="torch", precision="fp32").predict(images)
    if fast.task.name == "multi":  # the labels that apply, as printed and answered
        assert printed == by_torch and fast.predict(images) == answer
    else:  # the numbers, to fp32 rounding
        got, expected = ([float(line.split("\t")[1]) for line in side] for side in (printed, by_torch))
        np.testing.assert_allclose(got, expected, atol=1e-4)
        np.testing.assert_allclose(fast.predict(images), answer, atol=1e-4)
        with pytest.raises(ConfigError, match="predicts values, not probabilities"):
            fast.predict_proba(images)


def _close(value):
    if isinstance(value, dict):
        return {k: _close(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_close(v) for v in value]
    return pytest.approx(value, abs=1e-4) if isinstance(value, float) else value
