"""ONNX export: `graft export` on tiny image and text runs, the parity check (and its failure), the
metadata another runtime reads, `graft.load("model.onnx")` / `runtime="onnx"` against the PyTorch
predictor, dynamic batch and sequence axes, and the one-line errors (format, bundle, extras)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, make_image_folder

onnx = pytest.importorskip("onnx", reason="ONNX export needs the `onnx` extra")
ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the `onnx` extra")

import graft  # noqa: E402
from graft.cli import main  # noqa: E402
from graft.config import TrainConfig  # noqa: E402
from graft.errors import BundleError, ConfigError  # noqa: E402
from graft.export import Exporter, export, formats, register_exporter  # noqa: E402
from graft.export import onnx as graft_onnx  # noqa: E402
from graft.runner import run  # noqa: E402

TOL = 1e-4


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A linear probe on 24 synthetic 32 px images (3 of them the validation split)."""
    root = tmp_path_factory.mktemp("export-images")
    data = make_image_folder(root / "data", per_class=8, seed=0)
    config = TrainConfig(data=str(data), strategy="linear", image_size=32, epochs=5, out=str(root / "run"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        return run(config, log=lambda line: None).run_dir


@pytest.fixture(scope="module")
def image_export(image_run, tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("exported") / "images.onnx"
    code, stdout, stderr = _cli(["export", str(image_run), "--out", str(out), "--json"])
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    return out, json.loads(lines[-1]), "\n".join(lines[:-1]) + stderr


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    pytest.importorskip("transformers", reason="text needs the `text` extra")
    root = tmp_path_factory.mktemp("export-text")
    rng = random.Random(0)
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(30):
            label = ("pos", "neg")[i % 2]
            word = rng.choice(["great", "lovely", "superb"] if label == "pos" else ["awful", "dull", "poor"])
            writer.writerow([f"the film was {word}" + " and long" * rng.randrange(4), label])
    config = TrainConfig(data=str(root / "reviews.csv"), strategy="linear", epochs=5, out=str(root / "run"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        return run(config, log=lambda line: None).run_dir


# --------------------------------------------------------------------------- images


@pytest.mark.precision
def test_image_export_passes_parity_on_the_runs_validation_images(image_export) -> None:
    out, result, printed = image_export
    assert out.is_file() and result["out"] == str(out) and result["assets"] is None
    assert result["max_abs_diff"] <= TOL
    assert result["samples"] == 3 and result["sample_source"] == "3 validation images of the run"
    assert "parity at fp32: max |p_onnx - p_torch| =" in printed and "3 validation images" in printed


def test_image_metadata_lets_another_runtime_prepare_inputs(image_export, image_run) -> None:
    out, _, _ = image_export
    props = _props(out)
    assert json.loads(props["graft.classes"]) == list(CLASSES)
    prep = json.loads(props["graft.preprocessing"])
    assert prep["input_size"] == 32 and prep["mean"] == [0.5, 0.5, 0.5] and prep["interpolation"] == "bicubic"
    assert props["graft.version"] == graft.__version__ and props["graft.modality"] == "image"
    assert "pixel_values" in json.loads(props["graft.inputs"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "pixel_values" and inp.shape[1:] == [3, 32, 32] and isinstance(inp.shape[0], str)
    assert [o.name for o in session.get_outputs()] == ["probabilities"]


@pytest.mark.precision
def test_onnx_predictor_matches_the_torch_predictor(image_export, image_run) -> None:
    out, _, _ = image_export
    files = sorted(str(p) for p in (image_run.parent / "data").rglob("*.*"))[:7]
    torch_model, onnx_model = graft.load(image_run, precision="fp32"), graft.load(out)
    assert type(onnx_model).__name__ == "OnnxPredictor" and onnx_model.classes_ == torch_model.classes_
    np.testing.assert_allclose(
        onnx_model.predict_proba(files, batch_size=3), torch_model.predict_proba(files), atol=TOL
    )
    assert onnx_model.predict(files) == torch_model.predict(files)
    assert onnx_model.predict_proba([]).shape == (0, len(CLASSES))
    # the model takes exactly what preprocess gives, at any batch size (dynamic axis)
    x = torch_model.preprocess(files)
    np.testing.assert_array_equal(onnx_model.preprocess(files), x)
    for n in (1, 7):
        (p,) = onnx_model.session.run(None, {"pixel_values": x[:n]})
        np.testing.assert_allclose(p, torch_model.predict_proba(files[:n]), atol=TOL)


def test_graft_predict_on_an_exported_onnx_file(image_export, image_run) -> None:
    """`graft predict model.onnx IMAGES` (the README's promise): the ONNX model's labels and
    probabilities, an unreadable input reported beside the others (exit 3), not a traceback."""
    out, _, _ = image_export
    files = sorted(str(p) for p in (image_run.parent / "data").rglob("*.*"))[:4]
    code, stdout, stderr = _cli(["predict", str(out), *files, "--top-k", "2", "--json"])
    assert code == 0, stderr
    rows = json.loads(stdout.strip().splitlines()[-1])["predictions"]
    want = graft.load(out).predict_proba(files)
    for row, p in zip(rows, want, strict=True):
        assert row["predictions"][0]["label"] == CLASSES[int(p.argmax())]
        assert row["predictions"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    code, stdout, stderr = _cli(["predict", str(out), files[0], str(image_run / "missing.png")])
    assert code == 3 and "missing.png" in stderr and "Traceback" not in stderr
    assert stdout.startswith(files[0]) and "precision fp32" in stderr
    # a table of the same images (paths relative to it): the same answers, without PyTorch too
    table = image_run.parent / "data" / "to_predict.csv"
    table.write_text("image\n" + "".join(f"{Path(f).relative_to(table.parent)}\n" for f in files))
    code, stdout, stderr = _cli(["predict", str(out), "--input", str(table), "--top-k", "2", "--json"])
    assert code == 0, stderr
    from_table = json.loads(stdout.strip().splitlines()[-1])["predictions"]
    assert [r["input"] for r in from_table] == files
    assert [r["predictions"] for r in from_table] == [r["predictions"] for r in rows]


@pytest.mark.precision
def test_runtime_onnx_on_a_run_folder(image_run) -> None:
    files = sorted(str(p) for p in (image_run.parent / "data" / "red").iterdir())[:3]
    model = graft.load(image_run, runtime="onnx")  # no model.onnx there: exported in memory
    assert not (image_run / "model.onnx").exists()
    np.testing.assert_allclose(
        model.predict_proba(files), graft.load(image_run, precision="fp32").predict_proba(files), atol=TOL
    )


def test_parity_inputs_fall_back_to_synthetic_images(image_run, tmp_path) -> None:
    moved = tmp_path / "run"
    shutil.copytree(image_run, moved)
    report = json.loads((moved / "report.json").read_text())
    report["config"]["data"] = str(tmp_path / "gone")
    (moved / "report.json").write_text(json.dumps(report))
    predictor = graft.load(moved)
    items, where = graft_onnx.parity_inputs(moved, predictor, 5)
    assert len(items) == 5 and all(a.shape == (32, 32, 3) and a.dtype == np.uint8 for a in items)
    assert where.startswith("5 synthetic images (") and "gone" in where


def test_a_failed_parity_check_is_an_error_and_writes_nothing(image_run, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(graft_onnx, "TOLERANCE", -1.0)  # any difference, even 0, now fails
    out = tmp_path / "out" / "bad.onnx"
    code, _, err = _cli(["export", str(image_run), "--out", str(out)])
    assert code == 2 and not out.parent.exists()
    assert err.count("\n") == 1 and "parity check failed" in err and "nothing was written" in err


# --------------------------------------------------------------------------- texts


@pytest.mark.precision
def test_text_export_with_tokenizer_and_dynamic_sequence_axis(text_run) -> None:
    result = export(text_run, "onnx")  # default: RUN_DIR/model.onnx + model.assets/
    out = text_run / "model.onnx"
    assert result["out"] == str(out) and result["max_abs_diff"] <= TOL
    assert result["sample_source"].endswith("validation texts of the run")
    assert (text_run / "model.assets" / "tokenizer" / "tokenizer.json").is_file()
    # a second export into the run folder copies the tokenizer again, not the first export's copy
    assert graft_onnx.asset_folders(text_run, graft.load(out).modality) == [text_run / "tokenizer"]
    props = _props(out)
    assert props["graft.assets"] == "model.assets" and props["graft.modality"] == "text"
    assert set(json.loads(props["graft.inputs"])) == {"input_ids", "attention_mask"}

    texts = ["a superb film", "the film was awful and long and long and long", "dull"]
    onnx_model, torch_model = graft.load(out), graft.load(text_run, precision="fp32")
    np.testing.assert_allclose(onnx_model.predict_proba(texts), torch_model.predict_proba(texts), atol=TOL)
    assert onnx_model.predict(texts) == torch_model.predict(texts)
    # without graft: the tokenizer files beside the model, padded batches of any length
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(text_run / "model.assets" / "tokenizer" / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=json.loads(props["graft.preprocessing"])["pad_id"])
    encoded = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }
    assert feeds["input_ids"].shape[1] > 3  # padded to the longest text
    (p,) = onnx_model.session.run(None, feeds)
    np.testing.assert_allclose(p, torch_model.predict_proba(texts), atol=TOL)
    # runtime="onnx" on the run folder picks the fresh model.onnx up
    assert graft.load(text_run, runtime="onnx").session.get_modelmeta().custom_metadata_map == props
    # the model without its tokenizer beside it: one line saying what to copy
    moved = shutil.move(text_run / "model.assets", text_run.parent / "elsewhere")
    with pytest.raises(BundleError, match=r"needs the folder model.assets/ beside it"):
        graft.load(out)
    shutil.move(moved, text_run / "model.assets")


# --------------------------------------------------------------------------- errors and registry


def test_unknown_format_and_not_a_bundle_are_one_line_errors(image_run, tmp_path) -> None:
    code, _, err = _cli(["export", str(image_run), "--format", "tflite"])
    assert code == 2 and err.count("\n") == 1 and "unknown export format 'tflite'" in err and "onnx" in err
    code, _, err = _cli(["export", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "not a graft run folder" in err
    code, _, err = _cli(["export", str(image_run), "--out", str(tmp_path / "model.bin")])
    assert code == 2 and err.count("\n") == 1 and "must end in .onnx" in err


def test_missing_extra_names_the_pip_command(image_run, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    code, _, err = _cli(["export", str(image_run)])
    assert code == 2 and err.count("\n") == 1 and "pip install 'graft-learn[onnx]'" in err
    with pytest.raises(ConfigError, match=r"pip install 'graft-learn\[onnx\]'"):
        graft.load(image_run / "model.onnx")


def test_load_rejects_bad_onnx_files_and_runtimes(tmp_path, image_run) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        graft.load(tmp_path / "junk.onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [x])
    graph.output[0].name = "y"
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(BundleError, match="no graft metadata"):
        graft.load(tmp_path / "foreign.onnx")
    with pytest.raises(ConfigError, match="unknown runtime 'tflite'"):
        graft.load(image_run, runtime="tflite")


def test_exporters_are_a_registry() -> None:
    assert formats() == ["onnx"]
    with pytest.raises(ValueError, match="already registered"):
        register_exporter(Exporter("onnx", ".onnx", lambda *a, **k: {}, "again"))
