"""Text tables and folders: formats, skipped rows named by line, one-line errors, splits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from graft.data import DataSplits, Labelled
from graft.data.tables import split_columns
from graft.data.text import is_text_data, load_text_data, read_text_column, read_text_data
from graft.errors import DataError


def _csv(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    return path


def test_csv_skips_bad_rows_and_names_their_lines(tmp_path: Path) -> None:
    body = (
        b"text,label\n"
        b"good one,a\n"
        b"broken \xff\xfe bytes,b\n"  # line 3: not UTF-8
        b",a\n"  # line 4: empty text
        b"no label,\n"  # line 5: missing label
        b'"quoted, with comma",b\n'
        b"too,many,fields\n"  # line 7
    )
    table = read_text_data(_csv(tmp_path / "d.csv", body), ["text"], "label")
    assert table.texts == ["good one", "quoted, with comma"]
    assert table.labels == ["a", "b"]
    reasons = [s.reason for s in table.skipped]
    assert reasons == [
        "line 3: not valid UTF-8",
        "line 4: empty text",
        "line 5: missing label in column 'label'",
        "line 7: 3 fields where the header has 2",
    ]


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", b"review,sentiment\nnice,pos\n")
    with pytest.raises(DataError, match=r"no column 'text'.*'review', 'sentiment'"):
        read_text_data(path, ["text"], "sentiment")


def test_two_text_columns_are_a_pair_and_three_are_joined(tmp_path: Path) -> None:
    rows = b"title\tbody\ttags\tlabel\nHello\tworld\tgreeting\tx\n\tonly body\t\ty\n"
    path = _csv(tmp_path / "d.tsv", rows)
    table = read_text_data(path, split_columns("title,body"), "label")
    assert table.texts == [("Hello", "world"), ("", "only body")]
    table = read_text_data(path, split_columns("title,body,tags"), "label")
    assert table.texts == ["Hello\nworld\ngreeting", "only body"]


def test_jsonl_skips_bad_json(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "a b", "label": "x"}), "{not json", json.dumps([1, 2])]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    table = read_text_data(path, ["text"], "label")
    assert table.texts == ["a b"]
    assert [s.reason.split(":")[0] for s in table.skipped] == ["line 2", "line 3"]


def test_folder_of_txt_files(tmp_path: Path) -> None:
    for label, texts in {"ham": ["hi there", "see you"], "spam": ["win money", ""]}.items():
        (tmp_path / label).mkdir()
        for i, text in enumerate(texts):
            (tmp_path / label / f"{i}.txt").write_text(text)
    assert is_text_data(tmp_path)
    table = read_text_data(tmp_path, ["text"], "label")
    assert sorted(zip(table.labels, table.texts, strict=True)) == [
        ("ham", "hi there"),
        ("ham", "see you"),
        ("spam", "win money"),
    ]
    assert [s.reason for s in table.skipped] == ["empty text"]


def test_modality_detection(tmp_path: Path) -> None:
    assert is_text_data(_csv(tmp_path / "a.csv", b"text,label\n"))
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "1.jpg").write_bytes(b"")
    assert not is_text_data(tmp_path / "imgs")


def test_splits_from_a_task_folder_and_unknown_labels(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(20))
    _csv(tmp_path / "train.csv", f"text,label\n{rows}".encode())
    _csv(tmp_path / "dev.csv", b"text,label\nx,a\ny,c\n")
    assert is_text_data(tmp_path)
    splits = load_text_data(str(tmp_path), None, None, ["text"], "label", 0.1, 0)
    assert splits.classes == ("a", "b")
    assert len(splits.train) == 20 and len(splits.val) == 1
    assert splits.val_source.endswith("dev.csv")
    assert any("'c' is not among the training labels" in s.reason for s in splits.skipped)


def test_val_fraction_split_is_stratified(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40))
    path = _csv(tmp_path / "t.csv", f"text,label\n{rows}".encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stratifiable, no case clashes: no warning at all
        splits = load_text_data(str(path), None, None, ["text"], "label", 0.25, 0)
    assert isinstance(splits, DataSplits) and isinstance(splits.train, Labelled)
    assert splits.val_source == "split:0.25" and splits.name == f"{tmp_path.name}-t"
    assert len(splits.val) == 10 and sorted(splits.val.labels.tolist()) == [0] * 5 + [1] * 5
    assert splits.train.labels.dtype == np.int64
    assert not set(splits.train.sources) & set(splits.val.sources)
    assert len(set(splits.train.sources) | set(splits.val.sources)) == 40
    again = load_text_data(str(path), None, None, ["text"], "label", 0.25, 0)
    assert list(again.val.sources) == list(splits.val.sources)  # seeded
    other = load_text_data(str(path), None, None, ["text"], "label", 0.25, 1)
    assert list(other.val.sources) != list(splits.val.sources)


def test_val_fraction_split_refuses_a_singleton_label_naming_it(tmp_path: Path) -> None:
    rows = "only one,rare\n" + "".join(f"text {i},common\n" for i in range(9))
    path = _csv(tmp_path / "t.csv", f"text,label\n{rows}".encode())
    with pytest.raises(DataError, match=r"t\.csv: class 'rare' has a single example.*--val"):
        load_text_data(str(path), None, None, ["text"], "label", 0.3, 0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_bad_val_fraction_is_an_error(tmp_path: Path, fraction: float) -> None:
    rows = "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(10))
    _csv(tmp_path / "train.csv", f"text,label\n{rows}".encode())
    with pytest.raises(DataError, match="--val-fraction"):
        load_text_data(str(tmp_path / "train.csv"), None, None, ["text"], "label", fraction, 0)
    _csv(tmp_path / "dev.csv", b"text,label\nx,a\ny,b\n")
    with pytest.raises(DataError, match="--val-fraction"):  # checked even when dev.csv is used
        load_text_data(str(tmp_path), None, None, ["text"], "label", fraction, 0)


def test_labels_differing_only_in_case_stay_apart_with_one_warning(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{label}\n" for i, label in enumerate(["Pos", " pos ", "pos", "neg"] * 5))
    path = _csv(tmp_path / "t.csv", f"text,label\n{rows}".encode())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = load_text_data(str(path), None, None, ["text"], "label", 0.25, 0)
    clashes = [str(w.message) for w in record if "differ only in case" in str(w.message)]
    assert len(clashes) == 1
    assert "labels 'Pos' and 'pos' differ only in case; they are kept as different classes" in clashes[0]
    assert str(path) in clashes[0] and "neg" not in clashes[0]
    assert splits.classes == ("Pos", "neg", "pos")  # whitespace stripped, case kept
    counts = np.bincount(np.concatenate([splits.train.labels, splits.val.labels])).tolist()
    assert counts == [5, 5, 10]


def test_several_case_clashes_are_named_in_one_warning(tmp_path: Path) -> None:
    labels = ["Pos", "pos", "NEG", "neg", "Neg", "other"] * 3
    rows = "".join(f"text {i},{label}\n" for i, label in enumerate(labels))
    path = _csv(tmp_path / "t.csv", f"text,label\n{rows}".encode())
    with pytest.warns(UserWarning, match="differ only in case") as record:
        load_text_data(str(path), None, None, ["text"], "label", 0.5, 0)
    clashes = [str(w.message) for w in record if "differ only in case" in str(w.message)]
    assert len(clashes) == 1
    assert "'NEG', 'Neg' and 'neg'; 'Pos' and 'pos'" in clashes[0]


def test_one_label_is_an_error(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", b"text,label\na,x\nb,x\n")
    with pytest.raises(DataError, match=r"t\.csv: training needs at least 2 labels, found 1 \('x'\)"):
        load_text_data(str(path), None, None, ["text"], "label", 0.1, 0)
    empty = _csv(tmp_path / "e.csv", b"text,label\n,x\n")
    with pytest.raises(DataError, match=r"e\.csv: .*found 0 \(no usable rows, 1 skipped\)"):
        load_text_data(str(empty), None, None, ["text"], "label", 0.1, 0)


def test_read_text_column_for_prediction(tmp_path: Path) -> None:
    (tmp_path / "lines.txt").write_text("first\n\nsecond\n")
    assert read_text_column(tmp_path / "lines.txt", "text") == ["first", "second"]
    table = _csv(tmp_path / "in.csv", b"review\nnice\nbad\n")
    assert read_text_column(table, "review") == ["nice", "bad"]
