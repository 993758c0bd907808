"""Tables of image paths: a CSV, TSV, JSONL, parquet or feather file whose column holds image paths
(absolute, or relative to the table) is images, wherever a table is read: `graft train` (and --val,
--test), `graft eval`, `graft predict --input`, `graft compare`, `Classifier.fit(path)` and
DataFrames. `--image-column` names the column; without it, the one column whose values are mostly
existing image files is taken. Each door gives the same answers on the same images."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI, synthetic_image
from PIL import Image

import graft
from graft.cli import main
from graft.data.image_sets import ImageColumns, image_column_of, load_image_data
from graft.data.splits import TableLabels
from graft.errors import DataError
from graft.modalities import detect

OPTIONS = ["--strategy", "linear", "--image-size", "32", "--epochs", "20"]
PYTHON = {"strategy": "linear", "image_size": 32, "epochs": 20}
COLUMNS = ["image", "labels", "colour", "brightness"]


def _quiet(line: str) -> None:
    pass


def _write_table(root: Path, name: str, n: int, seed: int, absolute: bool = False) -> Path:
    """root/<name>.csv naming root/images/<name>NNN.png (relative to the table, or absolute): the
    colour (single), the colour and "warm" for red (multi), the brightness (regression)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = ["red", "green", "blue"][i % 3]
        pixels = synthetic_image(colour, rng)
        file = root / "images" / f"{name}{i:03d}.png"
        Image.fromarray(pixels).save(file)
        shown = str(file) if absolute else f"images/{file.name}"
        labels = f"{colour}|warm" if colour == "red" else colour
        rows.append([shown, labels, colour, f"{pixels.mean() / 255:.4f}"])
    with open(root / f"{name}.csv", "w", newline="") as f:
        csv.writer(f).writerows([COLUMNS, *rows])
    return root / f"{name}.csv"


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    """train.csv and test.csv of relative paths, and a multi-label run trained on them from the CLI."""
    root = tmp_path_factory.mktemp("table")
    train, test = _write_table(root, "train", 45, 0), _write_table(root, "test", 15, 1)
    out = root / "run"
    argv = ["train", str(train), "--test", str(test), "--label-column", "labels", "--task", "multi"]
    assert main([*argv, *OPTIONS, "--out", str(out), "--json"]) == 0
    return {"root": root, "train": train, "test": test, "run": out}


# --------------------------------------------------------------------------- which column, which modality


def test_the_column_of_image_paths_is_found_and_makes_the_table_images(table):
    assert image_column_of(table["train"], ImageColumns(text="text", label="labels")) == "image"
    assert detect(table["train"]).modality.name == "image"
    texts = table["root"] / "texts.csv"
    texts.write_text("text,label\na fine film,pos\na dull film,neg\n")
    assert detect(texts).modality.name == "text"
    # a table with the text column holds texts, even beside a column of image paths (captions)
    captions = table["root"] / "captions.csv"
    captions.write_text("text,image,label\na red square,images/train000.png,red\n")
    assert detect(captions).modality.name == "text"


def test_a_text_column_of_image_paths_is_refused_with_one_line_naming_image_column(table, capsys):
    argv = ["train", str(table["train"]), "--text-column", "image", "--label-column", "labels"]
    code, _, err = _cli(argv, capsys)
    assert code != 0 and err.count("\n") == 1
    assert "column 'image' holds paths of image files, not texts" in err
    assert "--image-column image" in err


def test_a_missing_column_names_the_option_that_fits(table, capsys):
    # the images are found; the label column is what is missing: the hint is --label-column alone
    code, _, err = _cli(["train", str(table["train"]), *OPTIONS], capsys)
    assert code != 0
    assert "no column 'label'; the columns are 'image', 'labels', 'colour', 'brightness'" in err
    assert err.strip().endswith("(use --label-column)")
    code, _, err = _cli(["train", str(table["train"]), "--image-column", "picture", *OPTIONS], capsys)
    assert "no column 'picture'" in err and "(use --image-column)" in err


def test_an_image_column_given_wins_over_detection(tmp_path):
    train = _write_table(tmp_path, "train", 12, 0)
    assert image_column_of(train, ImageColumns("image", "text", "label")) == "image"
    with pytest.raises(DataError, match="no column 'pic'.*use --image-column"):
        image_column_of(train, ImageColumns("pic", "text", "label"))


# --------------------------------------------------------------------------- every door, the same answers


def test_cli_train_eval_and_predict_on_image_tables(table, capsys):
    report = json.loads((table["run"] / "report.json").read_text())
    assert report["plan"]["modality"] == "image" and report["task"]["name"] == "multi"
    assert report["data"]["test"] == 15 and report["test"]["map"] > 0.9
    # eval reads the table (relative paths) from another folder
    code, out, _ = _cli(["eval", str(table["run"]), str(table["test"]), "--json"], capsys)
    assert code == 0
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["map"] == pytest.approx(report["test"]["map"], abs=1e-6) and metrics["skipped_files"] == []
    code, out, _ = _cli(["predict", str(table["run"]), "--input", str(table["test"]), "--json"], capsys)
    assert code == 0
    rows = json.loads(out.strip().splitlines()[-1])["predictions"]
    assert len(rows) == 15 and rows[0]["input"] == str(table["root"] / "images" / "test000.png")
    assert rows[0]["labels"] == ["red", "warm"] and rows[1]["labels"] == ["green"]
    # the same files through Python: the same labels
    files = [row["input"] for row in rows]
    from_python = graft.load(table["run"]).predict(files)
    assert [sorted(labels) for labels in from_python] == [sorted(row["labels"]) for row in rows]


def test_python_fit_on_a_table_path_trains_what_the_cli_trained(table, tmp_path):
    clf = graft.Classifier(**PYTHON, out=str(tmp_path / "py"), task="multi", label_column="labels")
    clf.fit(str(table["train"]), log=_quiet)
    assert clf.task_.name == "multi" and list(clf.classes_) == ["blue", "green", "red", "warm"]
    cli_run = graft.load(table["run"])
    files = [str(p) for p in sorted((table["root"] / "images").glob("test*.png"))]
    np.testing.assert_allclose(clf.predict_proba(files), cli_run.predict_proba(files), rtol=1e-5, atol=1e-6)


def test_a_dataframe_of_the_same_rows_trains_what_the_table_trains(table, tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    options = {**PYTHON, "label_column": "colour"}
    from_table = graft.Classifier(**options, out=str(tmp_path / "csv")).fit(str(table["train"]), log=_quiet)
    frame = pd.read_csv(table["train"])[["image", "colour"]]
    monkeypatch.chdir(table["root"])  # a DataFrame's relative paths are read from the current folder
    files = [str(p) for p in sorted((table["root"] / "images").glob("test*.png"))]
    expected = from_table.predict_proba(files)
    for name, params in (("found", {}), ("named", {"image_column": "image"})):
        from_frame = graft.Classifier(**options, **params, out=str(tmp_path / name)).fit(frame, log=_quiet)
        for key in ("train", "val"):
            assert from_frame.report_["data"][key] == from_table.report_["data"][key]
        np.testing.assert_allclose(from_frame.predict_proba(files), expected, rtol=1e-5, atol=1e-6)


def test_a_dataframe_whose_relative_paths_all_fail_says_where_it_looked(table, tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(table["train"])[["image", "colour"]]
    monkeypatch.chdir(tmp_path)  # not the folder the paths are relative to
    clf = graft.Classifier(**PYTHON, out=str(tmp_path / "df"), label_column="colour")
    with pytest.raises(DataError) as info, pytest.warns(UserWarning, match="skipping 45 of 45"):
        clf.fit(frame, log=_quiet)
    message = str(info.value)
    assert "\n" not in message and "cannot tell what these inputs are" not in message
    assert "column 'image'" in message and str(tmp_path) in message and "'images/train000.png'" in message


# --------------------------------------------------------------------------- paths, skipped files, tasks


def test_paths_are_relative_to_the_table_or_absolute(tmp_path, monkeypatch):
    relative = _write_table(tmp_path / "rel", "train", 12, 0)
    absolute = _write_table(tmp_path / "abs", "train", 12, 0, absolute=True)
    monkeypatch.chdir(tmp_path)  # neither table's folder
    how = TableLabels("colour")
    for path in (relative, absolute):
        splits = load_image_data(path, val_fraction=0.25, labels=how)
        assert len(splits.train) + len(splits.val) == 12 and not splits.skipped
        assert all(Path(p).is_file() for p in splits.train.sources)
        assert splits.classes == ("blue", "green", "red")


def test_missing_and_unreadable_files_are_skipped_counted_and_named(tmp_path, capsys):
    train = _write_table(tmp_path, "train", 30, 0)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    with open(train, "a", newline="") as f:
        for name in ("gone.png", "broken.png"):
            csv.writer(f).writerow([f"images/{name}", "red", "red", "0.5"])
    with pytest.warns(UserWarning, match=r"skipping 2 of 32 image\(s\) missing or unreadable"):
        splits = load_image_data(train, val_fraction=0.2, labels=TableLabels("colour"))
    assert len(splits.train) + len(splits.val) == 30
    reasons = {Path(s.path).name: s.reason for s in splits.skipped}
    assert reasons["gone.png"] == "no such file" and "broken.png" in reasons
    out = tmp_path / "run"
    argv = ["train", str(train), "--label-column", "brightness", "--task", "regression", *OPTIONS]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "regression"
    assert {Path(s["path"]).name for s in report["skipped_files"]} == {"gone.png", "broken.png"}
    capsys.readouterr()
    code, stdout, _ = _cli(["predict", str(out), "--input", str(train), "--json"], capsys)
    rows = json.loads(stdout.strip().splitlines()[-1])["predictions"]
    assert code == 3 and len(rows) == 32  # predicted, but for the two files it cannot read
    assert {Path(r["input"]).name for r in rows if "error" in r} == {"gone.png", "broken.png"}


def test_a_split_folder_of_image_tables_trains_and_evaluates_its_test_split(tmp_path, capsys):
    folder = tmp_path / "splits"
    _write_table(folder, "train", 30, 0)
    _write_table(folder, "dev", 6, 1)
    _write_table(folder, "test", 9, 2)
    out = tmp_path / "run"
    assert main(["train", str(folder), "--label-column", "colour", *OPTIONS, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["modality"] == "image"
    assert (report["data"]["train"], report["data"]["val"], report["data"]["test"]) == (30, 6, 9)
    assert report["data"]["val_source"].endswith("dev.csv")
    code, stdout, _ = _cli(["eval", str(out), str(folder), "--json"], capsys)
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and metrics["split"] == "test" and metrics["data"].endswith("test.csv")


def test_a_labels_csv_may_name_its_images_in_an_image_column(tmp_path):
    _write_table(tmp_path, "labels", 12, 0)
    (tmp_path / "labels.csv").rename(tmp_path / "images" / "labels.csv")
    table = (tmp_path / "images" / "labels.csv").read_text().replace("images/", "")
    (tmp_path / "images" / "labels.csv").write_text(table)
    splits = load_image_data(tmp_path / "images", val_fraction=0.25, labels=TableLabels("colour"))
    assert len(splits.train) + len(splits.val) == 12 and splits.classes == ("blue", "green", "red")


def test_parquet_and_jsonl_tables_of_image_paths_read_as_the_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    if not IN_CI:
        pytest.importorskip("pyarrow", reason="parquet needs the `tables` extra")
    train = _write_table(tmp_path, "train", 12, 0)
    frame = pd.read_csv(train)
    frame.to_parquet(tmp_path / "train.parquet")
    frame.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    how = TableLabels("colour")
    expected = load_image_data(train, val_fraction=0.25, labels=how)
    for name in ("train.parquet", "train.jsonl"):
        splits = load_image_data(tmp_path / name, val_fraction=0.25, labels=how)
        assert list(map(str, splits.train.sources)) == list(map(str, expected.train.sources))
        assert (splits.train.labels == expected.train.labels).all()


def test_compare_reads_an_image_table(tmp_path):
    train = _write_table(tmp_path, "train", 30, 0)
    out = tmp_path / "compare"
    argv = ["compare", str(train), "--label-column", "colour", "--labels-per-class", "3"]
    assert main([*argv, "--methods", "linear", "--image-size", "32", "--out", str(out), "--json"]) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["rows"][0]["train_examples"] == 9 and os.path.isdir(out)


def test_image_column_on_texts_is_a_one_line_error(tmp_path, capsys):
    for label in ("neg", "pos"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}.txt").write_text(f"{label} text {i}")
    code, _, err = _cli(["train", str(tmp_path), "--image-column", "image"], capsys)
    assert code != 0 and err.count("\n") == 1
    assert "--image-column is for tables of image paths; texts take --text-column" in err


def test_an_image_column_of_no_readable_file_is_one_line_naming_it(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("text,label\na fine film,pos\na dull film,neg\nanother,pos\nmore,neg\n")
    code, _, err = _cli(["train", str(table), "--image-column", "text"], capsys)
    assert code != 0 and err.count("\n") == 1
    assert "none of the 4 image(s) column 'text' names can be read" in err and str(tmp_path) in err


def test_a_column_naming_image_files_that_are_not_there_says_where_it_looked(tmp_path, capsys):
    table = _write_table(tmp_path / "moved", "train", 12, 0)
    moved = tmp_path / "train.csv"
    table.rename(moved)  # the paths were relative to the old folder
    code, _, err = _cli(["train", str(moved), "--label-column", "colour", *OPTIONS], capsys)
    assert code != 0 and err.count("\n") == 1
    assert "column 'image' names image files, but most are not found" in err and str(tmp_path) in err
