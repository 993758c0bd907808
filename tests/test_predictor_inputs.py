"""Every predictor reads every input kind `fit` takes alike: a list, a numpy array, a pandas
DataFrame and a Hugging Face Dataset (by the columns the model was trained on, label columns
ignored), sentence pairs as tuples or a 2-D array, image paths, PIL images and arrays. Each answer
is compared with the same predictor's answer on the plain list of inputs, for a text model, a
sentence-pair model and an image model, on every predictor: `graft.Classifier` after fit,
`graft.load`, onnxruntime (`runtime="onnx"`) and, for the exported image run, the torch-free one;
a `graft.Regressor` too. A table without the trained columns is refused in one line naming the
missing and the present ones."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLASSES, IN_CI, make_image_folder
from PIL import Image

import graft
from graft.data.frames import table_inputs
from graft.errors import DataError

try:
    import datasets
    import pandas as pd
except ImportError as err:  # the `tables` and `datasets` extras; CI installs them (GRAFT_CI=1)
    if IN_CI:
        raise
    pytest.skip(f"{err.name} is missing: the `tables` / `datasets` extras", allow_module_level=True)

WORDS = {"pos": ["great", "lovely", "superb"], "neg": ["awful", "boring", "poor"]}
TINY_IMAGES = {"backbone": "timm/test_efficientnet", "weights": "random", "image_size": 32}


def _quiet(line: str) -> None:
    pass


def _reviews(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choice(["neg", "pos"])
        rows.append({"id": i, "review": f"the film was {rng.choice(WORDS[label])}", "sentiment": label})
    return pd.DataFrame(rows)


def _pairs(n: int, seed: int) -> pd.DataFrame:
    """Two sentences and whether they share their mood."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(["pos", "neg"]), rng.choice(["pos", "neg"])
        first, second = f"I felt {rng.choice(WORDS[a])}", f"it was {rng.choice(WORDS[b])}"
        rows.append({"sentence1": first, "sentence2": second, "label": "same" if a == b else "other"})
    return pd.DataFrame(rows)


def _predictors(model: graft.Classifier, run_dir: Path, torch_free: bool = False) -> dict[str, Any]:
    """The Classifier, its bundle on PyTorch, on onnxruntime and (an exported image run) without
    PyTorch."""
    found: dict[str, Any] = {"Classifier": model, "graft.load": graft.load(run_dir, device="cpu")}
    if not IN_CI and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        return found  # the `onnx` extra: CI has it
    found["onnxruntime"] = graft.load(run_dir, runtime="onnx")
    if torch_free:
        from graft.export import export
        from graft.predict.light import load_exported

        export(run_dir, "onnx")
        found["torch-free"] = load_exported(run_dir)
        assert found["torch-free"] is not None
    return found


def _answers(predictor: Any, inputs: Any) -> np.ndarray:
    """Probabilities per input, from any predictor."""
    return np.asarray(predictor.predict_proba(inputs))


def _same_answers(predictors: dict[str, Any], kinds: dict[str, Any], plain: list[Any]) -> None:
    for name, predictor in predictors.items():
        expected = _answers(predictor, plain)
        assert expected.shape[0] == len(plain), name
        labels = np.asarray(predictor.predict(plain))
        for kind, inputs in kinds.items():
            got = _answers(predictor, inputs)
            assert got.shape == expected.shape, f"{name} on {kind}"
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{name} on {kind}")
            assert (np.asarray(predictor.predict(inputs)) == labels).all(), f"{name} on {kind}"


# --------------------------------------------------------------------------- texts


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[graft.Classifier, Path, pd.DataFrame]:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("texts")
    model = graft.Classifier(strategy="linear", epochs=3, out=str(root / "run"), label_column="sentiment")
    model.fit(_reviews(40, 0).drop(columns="id"), log=_quiet)  # `review`: the one column beside the label
    return model, root / "run", _reviews(8, 1)


def test_a_text_model_reads_every_input_kind_alike_on_every_predictor(text_run) -> None:
    model, run_dir, frame = text_run
    texts = list(frame["review"])
    kinds = {
        "numpy array": np.asarray(texts),
        "DataFrame": frame,  # id and sentiment columns beside the trained one
        "DataFrame of its one column": frame[["review"]],
        "DataFrame of one column named otherwise": pd.DataFrame({"text": texts}),
        "pandas Series": frame["review"],
        "Dataset": datasets.Dataset.from_pandas(frame),
        "Dataset selected": datasets.Dataset.from_pandas(_reviews(20, 1)).select(range(8)),
    }
    _same_answers(_predictors(model, run_dir), kinds, texts)


def test_the_bundle_records_the_columns_it_was_trained_on(text_run) -> None:
    import json

    _, run_dir, _ = text_run
    assert json.loads((run_dir / "graft.json").read_text())["input_columns"] == ["review"]


def test_a_table_without_the_trained_columns_is_refused_in_one_line(text_run) -> None:
    model, run_dir, frame = text_run
    other = frame.rename(columns={"review": "body"}).assign(title="x")
    for predictor in (model, graft.load(run_dir, device="cpu")):
        with pytest.raises(DataError) as caught:
            predictor.predict(other)
        message = str(caught.value)
        assert "\n" not in message and "no column 'review'" in message
        assert "'id', 'body', 'sentiment', 'title'" in message


# --------------------------------------------------------------------------- sentence pairs


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory) -> tuple[graft.Classifier, Path, pd.DataFrame]:
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("pairs")
    model = graft.Classifier(
        strategy="linear", epochs=3, out=str(root / "run"), text_column="sentence1,sentence2"
    )
    model.fit(_pairs(40, 0), log=_quiet)
    return model, root / "run", _pairs(6, 1)


def test_a_pair_model_reads_every_input_kind_alike_on_every_predictor(pair_run) -> None:
    model, run_dir, frame = pair_run
    pairs = list(zip(frame["sentence1"], frame["sentence2"], strict=True))
    kinds = {
        "2-D numpy array": np.asarray(pairs),
        "lists": [list(p) for p in pairs],
        "DataFrame": frame,  # its label column too
        "DataFrame of the two columns, reordered": frame[["sentence2", "sentence1"]],
        "Dataset": datasets.Dataset.from_pandas(frame),
    }
    predictors = _predictors(model, run_dir)
    _same_answers(predictors, kinds, pairs)
    loaded = predictors["graft.load"]  # the two columns are one input each row, not two inputs
    assert len(loaded.predict(frame)) == len(frame) != 2


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[graft.Classifier, Path, list[Path]]:
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root / "data", per_class=6, seed=0)
    files = sorted((root / "data").glob("*/*"))
    frame = pd.DataFrame({"image": [str(f) for f in files], "label": [f.parent.name for f in files]})
    options = {"strategy": "linear", "epochs": 2, "val_fraction": 0.25, **TINY_IMAGES}
    model = graft.Classifier(out=str(root / "run"), **options)
    model.fit(frame, log=_quiet)
    make_image_folder(root / "new", per_class=2, seed=1)
    return model, root / "run", sorted((root / "new").glob("*/*"))


def test_an_image_model_reads_every_input_kind_alike_on_every_predictor(image_run) -> None:
    model, run_dir, files = image_run
    paths = [str(f) for f in files]
    pictures = [Image.open(f).convert("RGB") for f in files]
    frame = pd.DataFrame({"image": paths, "label": [f.parent.name for f in files]})
    kinds = {
        "Paths": list(files),
        "PIL images": pictures,
        "arrays": [np.asarray(p) for p in pictures],
        "one numpy array": np.stack([np.asarray(p) for p in pictures]),
        "DataFrame": frame,
        "DataFrame of one column named otherwise": pd.DataFrame({"path": paths}),
        "DataFrame of PIL images": pd.DataFrame({"picture": pictures, "label": frame["label"]}),
        "Dataset of Image features": datasets.Dataset.from_dict(
            {"image": paths, "label": list(frame["label"])}
        ).cast_column("image", datasets.Image()),
    }
    predictors = _predictors(model, run_dir, torch_free=True)
    _same_answers(predictors, kinds, paths)
    assert set(CLASSES) == set(model.classes_)


def test_a_regressor_reads_a_table_by_its_columns_too(image_run, tmp_path) -> None:
    _, _, files = image_run
    paths = [str(f) for f in files]
    brightness = [float(np.asarray(Image.open(f)).mean() / 255) for f in files]
    frame = pd.DataFrame({"file": paths, "brightness": brightness, "note": "x"})
    options = {"strategy": "linear", "epochs": 2, "val_fraction": 0.25, **TINY_IMAGES}
    reg = graft.Regressor(out=str(tmp_path / "run"), label_column="brightness", **options)
    reg.fit(frame, log=_quiet)
    kinds = {"DataFrame": frame, "Dataset": datasets.Dataset.from_pandas(frame)}
    for name, predictor in {"Regressor": reg, "graft.load": graft.load(tmp_path / "run")}.items():
        expected = np.asarray(predictor.predict(paths))
        for kind, inputs in kinds.items():
            got = np.asarray(predictor.predict(inputs))
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{name} on {kind}")


# --------------------------------------------------------------------------- choosing the columns


def test_the_columns_come_from_the_bundle_else_its_recipe_else_the_one_column_left() -> None:
    frame = pd.DataFrame({"a": ["x", "y"], "b": ["u", "v"], "label": ["p", "q"]})
    recorded = {"input_columns": ["b"], "recipe": {"text_column": "a"}}
    assert table_inputs(frame, recorded) == ["u", "v"]
    old = {"recipe": {"text_column": "a,b", "label_column": "label"}}  # a bundle without input_columns
    assert table_inputs(frame, old) == [("x", "u"), ("y", "v")]
    assert table_inputs(frame[["b", "label"]], {"recipe": {"label_column": "label"}}) == ["u", "v"]
    refused = r"no column 'text', which the model was trained on; the columns are 'a', 'b', 'label'"
    with pytest.raises(DataError, match=refused):
        table_inputs(frame, {})
    with pytest.raises(DataError, match=r"DatasetDict: predict on one of its splits \('train'\)"):
        table_inputs(datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame)}), {})

