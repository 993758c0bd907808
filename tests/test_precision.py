"""--precision: decided once (`graft.runtime.precision.resolve_precision`), recorded in report.json and the
bundle, applied by training, extraction and prediction, and compared like with like.

GRAFT_CPU_BF16=1/0 makes `auto` treat this CPU as one with or without native bf16, so an AVX2
machine runs what an AVX512-BF16 machine runs (emulated, slower: the data here is tiny) and the
other way round. `.ci/run` runs every test marked `precision` under both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_image_folder

import graft
from graft.cli import main
from graft.config import TrainConfig
from graft.errors import ConfigError
from graft.runner import run
from graft.runtime.precision import (
    CPU_BF16_ENV,
    autocast_dtype,
    current_precision,
    resolve_precision,
    use_precision,
)

pytestmark = pytest.mark.precision
CPU = torch.device("cpu")
# bf16 keeps 8 bits of mantissa: a probability moves by up to ~1e-2 through a small network
BF16_PROBABILITY_TOLERANCE = 0.05


@pytest.mark.parametrize(("forced", "expected"), [("1", "bf16"), ("0", "fp32")])
def test_auto_follows_the_cpus_native_bf16(monkeypatch, forced, expected):
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    precision = resolve_precision("auto", CPU)
    assert precision.name == expected and precision.reason.startswith("auto: this CPU has")
    assert resolve_precision("fp32", CPU).name == "fp32"  # asked for: whatever the CPU has


def test_precision_errors_are_one_line_and_name_the_fix(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown --precision 'fp8'"):
        resolve_precision("fp8", CPU)
    assert "emulated" in resolve_precision("bf16", CPU).reason  # allowed, and said to be slow


def test_outside_a_run_graft_computes_in_fp32_and_inside_at_its_precision(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert current_precision().name == "fp32" and autocast_dtype(CPU) is None
    with use_precision(resolve_precision("auto", CPU)):
        assert autocast_dtype(CPU) == torch.bfloat16
    assert autocast_dtype(CPU) is None


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> Path:
    """A linear probe on 24 synthetic 32 px images, on a CPU taken to have native bf16."""
    root = tmp_path_factory.mktemp("bf16-run")
    data = make_image_folder(root / "data", per_class=8, seed=0)
    make_image_folder(root / "holdout", per_class=3, seed=5)
    config = TrainConfig(data=str(data), strategy="linear", image_size=32, epochs=5, out=str(root / "run"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        mp.setenv(CPU_BF16_ENV, "1")
        return run(config, log=lambda line: None).run_dir


def test_the_run_records_its_precision_and_why(bf16_run):
    report = json.loads((bf16_run / "report.json").read_text())
    assert report["config"]["precision"] == "auto"
    assert report["plan"]["precision"] == "bf16" and "native bf16" in report["plan"]["precision_reason"]
    bundle = json.loads((bf16_run / "graft.json").read_text())
    assert bundle["plan"]["precision"] == "bf16"


@pytest.mark.parametrize("forced", ["1", "0"])
def test_load_defaults_to_this_machines_precision_and_fp32_gives_the_same_labels(
    bf16_run, monkeypatch, forced
):
    """What differs between machines: probabilities, within bf16's tolerance. What does not: the
    labels on these held-out images, and fp32 when asked for."""
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    images = sorted((bf16_run.parent / "holdout").glob("*/*"))
    default = graft.load(bf16_run, device="cpu")
    assert default.precision.name == ("bf16" if forced == "1" else "fp32")
    exact = graft.load(bf16_run, device="cpu", precision="fp32")
    assert exact.precision.name == "fp32"
    p_default, p_exact = default.predict_proba(images), exact.predict_proba(images)
    assert np.abs(p_default - p_exact).max() <= BF16_PROBABILITY_TOLERANCE
    truth = [p.parent.name for p in images]
    assert default.predict(images) == exact.predict(images) == truth
    if forced == "0":
        np.testing.assert_array_equal(p_default, p_exact)  # fp32 both ways


def test_an_export_matches_fp32_loading_to_its_printed_parity(bf16_run, tmp_path, monkeypatch, capsys):
    """With bf16 on: `graft export` prints its parity at fp32, and that is what a user comparing the
    ONNX model with graft.load(run, precision="fp32") gets."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    out = tmp_path / "model.onnx"
    assert main(["export", str(bf16_run), "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out.strip().splitlines()[-1])
    assert result["parity_precision"] == "fp32" and "parity at fp32" in printed.err
    images = sorted((bf16_run.parent / "holdout").glob("*/*"))
    on_onnx = graft.load(out).predict_proba(images)
    on_torch = graft.load(bf16_run, device="cpu", precision="fp32").predict_proba(images)
    assert np.abs(on_onnx - on_torch).max() <= 1e-4


def test_predict_and_eval_say_which_precision_they_use(bf16_run, monkeypatch, capsys):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    image = str(sorted((bf16_run.parent / "holdout" / CLASSES[0]).iterdir())[0])
    assert main(["predict", str(bf16_run), image, "--engine", "torch"]) == 0
    assert "precision bf16 (auto: this CPU has native bf16" in capsys.readouterr().err
    assert main(["predict", str(bf16_run), image, "--precision", "fp32"]) == 0
    assert "precision fp32 (given with --precision)" in capsys.readouterr().err
    assert main(["eval", str(bf16_run), str(bf16_run.parent / "holdout"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["precision"]["name"] == "bf16"


def test_the_engine_race_judges_parity_at_fp32_and_speed_against_bf16(monkeypatch):
    """On a CPU with bf16, ONNX Runtime (fp32) is compared with fp32 PyTorch for correctness, and
    raced against bf16 PyTorch (what would otherwise run) for speed."""
    pytest.importorskip("onnxruntime")
    from graft.runtime.engine import PARITY_TOLERANCE, choose_engine

    monkeypatch.setenv(CPU_BF16_ENV, "1")
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    x = torch.randn(8, 3, 24, 24)
    with use_precision(resolve_precision("auto", CPU)):
        _, choice = choose_engine(module, x, n_inputs=1000, engine="onnxruntime")
    assert choice.name == "onnxruntime", choice.reason  # correct at fp32: never "differs"
    assert choice.parity_precision == "fp32" and choice.torch_precision == "bf16"
    assert choice.max_abs_diff is not None and choice.max_abs_diff <= PARITY_TOLERANCE
    assert "PyTorch bf16" in choice.reason


def test_fp32_asked_for_trains_in_fp32_on_a_bf16_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    data = make_image_folder(tmp_path / "data", per_class=6, seed=0)
    seen: list[torch.dtype | None] = []
    from graft.training import probe

    real = probe.fit

    def spy(*args, **kwargs):
        seen.append(autocast_dtype(CPU))
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "fit", spy)
    config = TrainConfig(
        data=str(data), strategy="linear", image_size=32, epochs=2, precision="fp32", out=str(tmp_path / "r")
    )
    report = run(config, log=lambda line: None).report
    assert report["plan"]["precision"] == "fp32" and report["plan"]["precision_reason"] == (
        "given with --precision"
    )
    assert seen and all(dtype is None for dtype in seen)
