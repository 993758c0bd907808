"""Labelled texts from CSV, TSV, JSONL, parquet or feather tables (read by `tables`, as image tables
are), or a folder of `<class>/*.txt`; a folder holding train.csv (and maybe dev.csv / test.csv).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .splits import DataSplits, SkippedFile, TableLabels, check_val_fraction
from .tables import (
    TABLE_SUFFIXES,
    VAL_NAMES,
    TextTable,
    find_table,
    joined_text,
    labelled_splits,
    read_column,
    read_table,
    split_columns,
    table_sample,
)

__all__ = [
    "TABLE_SUFFIXES",
    "TEXT_FILE_SUFFIX",
    "TextTable",
    "find_table",
    "is_split_folder",
    "is_text_data",
    "joined_text",
    "labelled_splits",
    "load_text_data",
    "read_text_column",
    "read_text_data",
    "split_columns",
    "table_sample",
]

TEXT_FILE_SUFFIX = ".txt"


def is_text_data(path: str | Path) -> bool:
    """A table file, or a folder whose class subfolders hold .txt files."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if not path.is_dir():
        return False
    if is_split_folder(path):
        return True
    return any(p.suffix.lower() == TEXT_FILE_SUFFIX for p in path.glob("*/*"))


def read_text_data(
    path: str | Path, text_columns: Sequence[str], label_column: str, input_option: str = "--text-column"
) -> TextTable:
    """A table's rows (`tables.read_table`), or a folder's `<class>/*.txt` files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_dir():
        return _read_folder(path)
    return read_table(path, text_columns, label_column, input_option)


def _read_folder(folder: Path) -> TextTable:
    table = TextTable([], [])
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    for class_dir in classes:
        for file in sorted(class_dir.glob(f"*{TEXT_FILE_SUFFIX}")):
            try:
                text = file.read_text(encoding="utf-8-sig").strip()
            except UnicodeDecodeError:
                table.skipped.append(SkippedFile(str(file), "not valid UTF-8"))
                continue
            if not text:
                table.skipped.append(SkippedFile(str(file), "empty text"))
                continue
            table.texts.append(text)
            table.labels.append(class_dir.name)
    if not table.texts:
        raise DataError(f"{folder}: no readable .txt files in its class subfolders")
    return table


# --------------------------------------------------------------------------- splits

def is_split_folder(path: Path) -> bool:
    """A folder holding train.csv (and maybe dev.csv / test.csv), like a GLUE task folder."""
    return path.is_dir() and find_table(path, ["train"]) is not None


def load_text_data(
    data: str,
    val: str | None,
    test: str | None,
    text_columns: Sequence[str],
    label_column: str,
    val_fraction: float,
    seed: int,
    task: str = "auto",
    separator: str = "|",
) -> DataSplits:
    """train / val / test texts; val is --val, a dev file beside train, or a stratified split
    (a random one for multi-label and regression). `task` (graft.tasks) reads the labels.

    The classes are the sorted distinct training labels (surrounding whitespace stripped, so 'pos'
    and 'pos ' are one class, with a warning; labels that differ only in case stay apart, with a
    warning); val/test rows with another label are
    skipped and reported.
    """
    check_val_fraction(val_fraction)
    path = Path(data)
    if is_split_folder(path):
        val = val or _opt(find_table(path, VAL_NAMES))
        test = test or _opt(find_table(path, ["test"]))
        path = find_table(path, ["train"])  # type: ignore[assignment]
    read = lambda p: read_text_data(p, text_columns, label_column)  # noqa: E731
    tables = {"train": read(path), "val": read(val) if val else None, "test": read(test) if test else None}
    how = TableLabels(label_column, task, separator)
    return labelled_splits(path, tables, how, val_fraction, seed, _data_name(Path(data)), str(val))


def _opt(path: Path | None) -> str | None:
    return str(path) if path else None


def _data_name(path: Path) -> str:
    return path.resolve().name if path.is_dir() else f"{path.resolve().parent.name}-{path.stem}"


def read_text_column(path: str | Path, text_column: str) -> list[str | tuple[str, str]]:
    """Unlabelled texts: a table's text column(s), or a plain file with one text per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        return [line.strip() for line in lines if line.strip()]
    return read_column(path, text_column)
