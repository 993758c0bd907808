"""Data where people keep it: a pandas DataFrame, a parquet (or feather) file and a Hugging Face
`datasets` object each train to the same model as the equivalent CSV file or image folder (same
seed: the same split, accuracy and probabilities), for texts and for images; a large parquet file
streams; missing columns, extras and unreadable rows are one-line errors or skipped and counted."""

from __future__ import annotations

import contextlib
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, IN_CI, make_image_folder
from PIL import Image

import graft
from graft.cli import main
from graft.data.frames import frame_inputs
from graft.data.text import read_text_data
from graft.errors import DataError
from graft.evaluate import evaluate_folder

try:
    import datasets
    import pandas as pd
    import pyarrow as pa
except ImportError as err:  # the `tables` and `datasets` extras; CI installs them (GRAFT_CI=1)
    if IN_CI:
        raise
    pytest.skip(f"{err.name} is missing: the `tables` / `datasets` extras", allow_module_level=True)

IMAGES = {"strategy": "linear", "image_size": 32, "epochs": 3, "val_fraction": 0.25}
TEXTS = {"strategy": "linear", "epochs": 4, "text_column": "review", "label_column": "sentiment"}
WORDS = {"pos": ["great", "lovely", "superb", "fine"], "neg": ["awful", "boring", "poor", "fine"]}


@pytest.fixture(autouse=True)
def _offline_datasets(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _quiet(line: str) -> None:
    pass


def _reviews(n: int, seed: int) -> pd.DataFrame:
    """Reviews whose word gives the label away, except `fine` (either label): not every run is
    100% right, so a different split or model shows in the accuracy and the probabilities."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        rows.append(
            {"review": f"the film was {rng.choice(WORDS[label])}", "sentiment": label, "id": len(rows)}
        )
    return pd.DataFrame(rows)


def _same_model(a: graft.Classifier, b: graft.Classifier, inputs: list) -> None:
    """Same split, same validation accuracy, same probabilities on held-out inputs."""
    for key in ("train", "val", "test"):
        assert a.report_["data"][key] == b.report_["data"][key]
    assert a.report_["validation"]["accuracy"] == b.report_["validation"]["accuracy"]
    assert list(a.classes_) == list(b.classes_)
    np.testing.assert_allclose(a.predict_proba(inputs), b.predict_proba(inputs), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- texts


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("texts")
    train, test = _reviews(60, 0), _reviews(20, 1)
    train.to_csv(root / "train.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    csv_run = graft.Classifier(**TEXTS, out=str(root / "csv")).fit(str(root / "train.csv"), log=_quiet)
    return {"root": root, "train": train, "test": test, "csv": csv_run}


def test_a_dataframe_of_texts_trains_as_its_csv_file(texts, tmp_path):
    held_out = texts["test"]["review"].tolist()
    by_column = graft.Classifier(**TEXTS, out=str(tmp_path / "a")).fit(texts["train"], log=_quiet)
    _same_model(texts["csv"], by_column, held_out)
    frame = texts["train"]
    with_y = graft.Classifier(**TEXTS, out=str(tmp_path / "b")).fit(
        frame[["review"]], frame["sentiment"], log=_quiet
    )
    _same_model(texts["csv"], with_y, held_out)
    assert list(with_y.predict(texts["test"])) == list(texts["csv"].predict(held_out))  # predict(df) too
    assert texts["csv"].report_["validation"]["accuracy"] < 1.0  # the `fine` rows: a test that can fail


def test_parquet_and_feather_tables_train_as_the_csv_file(texts, tmp_path):
    texts["train"].to_parquet(tmp_path / "train.parquet")
    texts["train"].to_feather(tmp_path / "train.feather")
    held_out = texts["test"]["review"].tolist()
    for suffix in ("parquet", "feather"):
        out = tmp_path / suffix
        clf = graft.Classifier(**TEXTS, out=str(out)).fit(str(tmp_path / f"train.{suffix}"), log=_quiet)
        _same_model(texts["csv"], clf, held_out)


def _review_dataset(frame: pd.DataFrame) -> datasets.Dataset:
    features = datasets.Features(
        {
            "review": datasets.Value("string"),
            "sentiment": datasets.ClassLabel(names=["pos", "neg"]),  # not sorted: the names decide
            "id": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)


def test_a_saved_text_dataset_dict_trains_on_its_splits_as_csv_files(texts, tmp_path):
    train, dev = texts["train"].iloc[:45], texts["train"].iloc[45:]
    train.to_csv(tmp_path / "train.csv", index=False)
    dev.to_csv(tmp_path / "dev.csv", index=False)
    csv_run = graft.Classifier(**TEXTS, val=str(tmp_path / "dev.csv"), test=str(texts["root"] / "test.csv"))
    csv_run.set_params(out=str(tmp_path / "csv")).fit(str(tmp_path / "train.csv"), log=_quiet)
    parts = {"train": train, "Validation": dev, "test": texts["test"]}  # split names: any case
    parts = {name: _review_dataset(frame) for name, frame in parts.items()}
    saved = tmp_path / "reviews"
    datasets.DatasetDict(parts).save_to_disk(str(saved))
    out = tmp_path / "saved-run"
    argv = [
        "train",
        str(saved),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--strategy",
        "linear",
        "--epochs",
        "4",
        "--out",
        str(out),
        "--json",
    ]
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(argv) == 0
    line = json.loads(stdout.getvalue().strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["neg", "pos"] and report["plan"]["modality"] == "text"
    assert report["data"]["test"] == len(texts["test"]) and report["data"]["val"] == len(dev)
    assert line["test_accuracy"] == csv_run.report_["test"]["accuracy"]
    assert line["accuracy"] == csv_run.report_["validation"]["accuracy"]
    in_python = graft.Classifier(**TEXTS, out=str(tmp_path / "py")).fit(
        datasets.DatasetDict(parts), log=_quiet
    )
    _same_model(csv_run, in_python, texts["test"]["review"].tolist())


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("images")
    folder = make_image_folder(root / "data", per_class=6, seed=0)
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.parent.name, p.name))
    frame = pd.DataFrame({"file": [str(p) for p in files], "label": [p.parent.name for p in files]})
    held_out = [
        str(p) for p in sorted(make_image_folder(root / "held-out", per_class=2, seed=1).rglob("*.*"))
    ]
    folder_run = graft.Classifier(**IMAGES, out=str(root / "folder")).fit(str(folder), log=_quiet)
    return {"folder": folder, "frame": frame, "held_out": held_out, "folder_run": folder_run}


def test_dataframes_of_image_paths_and_of_images_train_as_the_folder(images, tmp_path):
    frame = images["frame"]
    paths = graft.Classifier(**IMAGES, out=str(tmp_path / "paths")).fit(frame, log=_quiet)  # `file`: found
    _same_model(images["folder_run"], paths, images["held_out"])
    decoded = pd.DataFrame(
        {"image": [np.asarray(Image.open(f)) for f in frame["file"]], "label": frame["label"]}
    )
    in_memory = graft.Classifier(**IMAGES, out=str(tmp_path / "arrays")).fit(decoded, log=_quiet)
    _same_model(images["folder_run"], in_memory, images["held_out"])


def test_a_labels_parquet_beside_the_images_reads_as_labels_csv(images, tmp_path):
    folder = tmp_path / "data"
    make_image_folder(folder, per_class=6, seed=0)
    frame = images["frame"].assign(
        file=[str(Path(f).relative_to(images["folder"])) for f in images["frame"]["file"]]
    )
    frame.to_csv(folder / "labels.csv", index=False)
    with_csv = graft.Classifier(**IMAGES, out=str(tmp_path / "csv")).fit(str(folder), log=_quiet)
    (folder / "labels.csv").unlink()
    frame.to_parquet(folder / "labels.parquet")
    with_parquet = graft.Classifier(**IMAGES, out=str(tmp_path / "parquet")).fit(str(folder), log=_quiet)
    _same_model(with_csv, with_parquet, images["held_out"])
    _same_model(images["folder_run"], with_parquet, images["held_out"])


def test_an_image_dataset_in_memory_and_saved_trains_as_the_folder(images, tmp_path):
    frame = images["frame"]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    pictures = [Image.open(f).copy() for f in frame["file"]]  # stored in the dataset as encoded bytes
    dataset = datasets.Dataset.from_dict(
        {"img": pictures, "label": frame["label"].tolist()}, features=features
    )
    in_python = graft.Classifier(**IMAGES, out=str(tmp_path / "py")).fit(dataset, log=_quiet)
    _same_model(images["folder_run"], in_python, images["held_out"])
    dataset.save_to_disk(str(tmp_path / "saved"))
    from_disk = graft.Classifier(**IMAGES, out=str(tmp_path / "disk")).fit(
        str(tmp_path / "saved"), log=_quiet
    )
    _same_model(images["folder_run"], from_disk, images["held_out"])
    assert from_disk.report_["plan"]["modality"] == "image"


# --------------------------------------------------------------------------- the same rules as today


def test_a_large_parquet_file_streams_its_needed_columns_in_batches(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from graft.data import tables, text

    n = 3 * tables.ARROW_BATCH_ROWS + 5
    table = pa.table(
        {
            "text": [f"t{i}" for i in range(n)],
            "label": ["a", "b"] * (n // 2) + ["a"] * (n % 2),
            "blob": [b"x" * 64] * n,
        }
    )
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=tables.ARROW_BATCH_ROWS)
    asked: list = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        asked.append(kwargs)
        for batch in real(self, *args, **kwargs):
            asked.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read the whole file"))
    read = text.read_text_data(tmp_path / "big.parquet", ["text"], "label")
    assert len(read.texts) == n and read.texts[-1] == f"t{n - 1}"
    assert asked[0]["columns"] == ["text", "label"]  # never the blob
    assert max(asked[1:]) <= tables.ARROW_BATCH_ROWS and len(asked) > 4


def test_unusable_rows_are_skipped_counted_and_named(tmp_path, images):
    frame = pd.DataFrame(
        {"text": ["good", "  ", None, "bad", "ok", "meh"], "label": ["a", "b", "a", None, "a", "b"]}
    )
    frame.to_parquet(tmp_path / "t.parquet")
    read = read_text_data(tmp_path / "t.parquet", ["text"], "label")
    assert read.texts == ["good", "ok", "meh"]
    assert [s.reason for s in read.skipped] == [
        "row 2: empty text",
        "row 3: empty text",
        "row 4: missing label in column 'label'",
    ]
    bad = images["frame"].copy()
    bad.loc[1, "file"] = str(tmp_path / "gone.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    bad.loc[2, "file"] = str(tmp_path / "broken.jpg")
    with pytest.warns(
        UserWarning, match=r"DataFrame: skipping 2 of 18 row\(s\) \(first: DataFrame row 1: no such file"
    ):
        sources, labels, skipped, columns = frame_inputs(bad, None, "text", "label", True)
    assert len(sources) == len(labels) == 16 and columns == ["file"] and len(skipped) == 2


def test_missing_columns_and_extras_are_one_line_errors(texts, tmp_path, monkeypatch, capsys):
    texts["train"].to_parquet(tmp_path / "t.parquet")
    assert main(["train", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"graft: error: {tmp_path / 't.parquet'}: no column 'text', 'label'; the columns are 'review', "
        "'sentiment', 'id' (use --text-column / --label-column)"
    )
    with pytest.raises(
        DataError, match=r"^DataFrame: no column 'label'; the columns are 'review', 'sentiment', 'id'"
    ):
        graft.Classifier().fit(texts["train"])
    with pytest.raises(
        DataError, match=r"^Dataset: no column 'label'; the columns are 'review', 'sentiment', 'id'"
    ):
        graft.Classifier().fit(_review_dataset(texts["train"]))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match=r"need the `tables` extra: pip install 'graft-learn\[tables\]'$"):
        graft.Classifier(**TEXTS).fit(str(tmp_path / "t.parquet"))
    monkeypatch.setitem(sys.modules, "datasets", None)
    from graft.data.frames import load_saved_dataset

    with pytest.raises(DataError, match=r"need the `datasets` extra: pip install 'graft-learn\[datasets\]'$"):
        load_saved_dataset(tmp_path)


def test_a_dataset_without_a_train_split_or_with_both_inputs_unnamed_says_so(texts, tmp_path):
    frame = texts["train"]
    only_test = datasets.DatasetDict({"test": _review_dataset(frame)})
    with pytest.raises(DataError, match=r"^DatasetDict: no `train` split; the splits are 'test'$"):
        graft.Classifier(**TEXTS).fit(only_test)
    two = frame.assign(title=frame["review"]).drop(columns=["id"])
    with pytest.raises(
        DataError, match=r"no column 'text' and no single column of images; the columns are 'review'"
    ):
        graft.Classifier(label_column="sentiment").fit(two)
    dataset = _review_dataset(frame)
    dataset.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match="graft eval does not read saved datasets yet"):
        evaluate_folder(texts["csv"].run_dir_, tmp_path / "saved")


def test_a_dataframe_label_per_column_gives_label_lists_or_targets():
    frame = pd.DataFrame({0: ["a", "b", "c"], "cat": [1, 0, 1], "dog": [0, 0, 1], "label": [1.5, None, 2.0]})
    texts, lists, _, columns = frame_inputs(frame, None, "0", "cat,dog", label_lists=True)
    assert columns == ["0"] and texts == ["a", "b", "c"] and lists == [["cat"], [], ["cat", "dog"]]
    _, targets, _, _ = frame_inputs(frame, None, "0", "cat,dog", label_lists=False)
    np.testing.assert_array_equal(targets, [[1, 0], [0, 0], [1, 1]])
    with pytest.warns(
        UserWarning, match=r"^DataFrame: skipping 1 of 3 row\(s\) \(first: DataFrame row 1: missing label\)$"
    ):
        texts, numbers, skipped, _ = frame_inputs(frame, None, "0", "label", label_lists=False)
    assert texts == ["a", "c"] and numbers == [1.5, 2.0] and skipped[0].reason == "missing label"


def test_a_dataframe_of_sentence_pairs_keeps_pairs_and_skips_a_row_with_both_sides_empty():
    frame = pd.DataFrame(
        {
            "premise": ["a man sings", None, "", "a dog runs"],
            "hypothesis": ["someone sings", "nobody", float("nan"), ""],
            "label": ["yes", "no", "no", "yes"],
        }
    )
    with pytest.warns(UserWarning):
        sources, labels, skipped, inputs = frame_inputs(frame, None, "premise,hypothesis", "label", False)
    assert inputs == ["premise", "hypothesis"]
    assert sources == [("a man sings", "someone sings"), ("", "nobody"), ("a dog runs", "")]
    assert [s.reason for s in skipped] == ["empty text"] and list(labels) == ["yes", "no", "yes"]
