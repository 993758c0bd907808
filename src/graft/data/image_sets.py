"""The image data sets as :class:`~graft.data.splits.DataSplits`: CIFAR-10, an ImageFolder, a folder
holding train/ [val/] [test/], and tables of image paths (a folder of images with its labels.csv, a
table file, train.csv [dev.csv] [test.csv]), read by the one table reader (`tables`) as text tables
are.

Bad user data is a :class:`DataError` with a one-line message that names the file or folder and
says what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .images import (
    _CIFAR_DEFAULT_ROOT,
    _IMAGE_DATA,
    _TRAIN_NAMES,
    IMAGE_EXTENSIONS,
    TEST_NAMES,
    VAL_NAMES,
    _require_dir,
    _verify_image,
    find_subdir,
    load_cifar10,
    scan_image_folder,
)
from .splits import DataSplits, Labelled, SkippedFile, TableLabels, check_val_fraction, stratified_split
from .tables import (
    TABLE_SUFFIXES,
    find_table,
    labels_task,
    read_column,
    read_table,
    split_columns,
    table_sample,
)
from .tables import VAL_NAMES as TABLE_VAL_NAMES


def load_image_data(
    data: str | Path,
    val: str | Path | None = None,
    test: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_root: str | Path | None = None,
    labels: TableLabels | None = None,
    columns: ImageColumns | None = None,
) -> DataSplits:
    """Train/val(/test) images from ``"cifar10"``, an ImageFolder, a folder holding train/
    [val/] [test/], a folder of images with a ``labels.csv``, or a table of image paths
    (`_table_splits`: any task; `columns` names the table's columns).

    Explicit ``val``/``test`` win over found folders; without a validation folder a stratified,
    seeded ``val_fraction`` of the train images becomes the validation set (see
    :func:`~graft.data.splits.stratified_split`). CIFAR-10 is read from (or downloaded to)
    ``data_root``; its test batch is the test set.
    """
    check_val_fraction(val_fraction)
    if data == "cifar10":
        return _cifar10_splits(Path(data_root or _CIFAR_DEFAULT_ROOT), val_fraction, seed)
    data = Path(data)
    columns = columns or ImageColumns()
    tables = split_tables(data) if labels_table(data) is None else ()
    if tables and image_column_of(tables[0], columns):  # train.csv [dev.csv] [test.csv] of images
        data, val, test = tables[0], val or tables[1], test or tables[2]  # type: ignore[assignment]  # --val/--test win
    if is_table_file(data) or (data.is_dir() and labels_table(data) is not None):
        return _table_splits(data, val, test, val_fraction, seed, labels, columns)
    _require_dir(data, "data folder")
    train_dir = find_subdir(data, _TRAIN_NAMES)
    if train_dir is None:  # plain ImageFolder: data itself holds the class folders
        train_dir, found_val, found_test = data, None, None
    else:
        found_val, found_test = find_subdir(data, VAL_NAMES), find_subdir(data, TEST_NAMES)
    val_dir = Path(val) if val is not None else found_val
    test_dir = Path(test) if test is not None else found_test

    train, classes, skipped = scan_image_folder(train_dir)
    if val_dir is not None:
        val_set, _, val_skipped = scan_image_folder(val_dir, classes=classes)
        skipped += val_skipped
        val_source = "folder"
    else:
        train_idx, val_idx = stratified_split(train.labels, val_fraction, seed, str(train_dir), classes)
        train, val_set = train.subset(train_idx), train.subset(val_idx)
        val_source = f"split:{val_fraction}"
    test_set = None
    if test_dir is not None:
        test_set, _, test_skipped = scan_image_folder(test_dir, classes=classes)
        skipped += test_skipped
    return DataSplits(train, val_set, test_set, classes, data.resolve().name, val_source, skipped)


LABELS_TABLE = "labels.csv"  # beside the images: a `file` column and the label column(s)
LABELS_TABLES = (LABELS_TABLE, "labels.parquet")  # the first found is read
FILE_COLUMN = "file"
IMAGE_SAMPLE_ROWS = 200  # a column holds image paths when half of its values in these first rows do


@dataclass(frozen=True)
class ImageColumns:
    """How a table of images is read: `image` (--image-column; None: the column of image paths is
    found), `text` (--text-column: a table with those columns holds texts), `label` (--label-column)."""

    image: str | None = None
    text: str = ""
    label: str = "label"


def labels_table(folder: Path) -> Path | None:
    """The labels.csv (or labels.parquet) beside a folder's images, if it has one."""
    return next((folder / n for n in LABELS_TABLES if (folder / n).is_file()), None)


def split_tables(folder: Path) -> tuple[Path | None, ...]:
    """(train, validation, test) tables of a folder laid out as train.csv [dev.csv] [test.csv] (None
    where one is missing); () for any other folder, and for one with a train/ folder of images."""
    if not folder.is_dir() or find_subdir(folder, _TRAIN_NAMES) is not None:
        return ()
    train = find_table(folder, ["train"])
    return (train, find_table(folder, TABLE_VAL_NAMES), find_table(folder, ["test"])) if train else ()


def is_table_file(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in TABLE_SUFFIXES


def holds_image_paths(values: Sequence[Any], folder: Path, existing: bool = True) -> bool:
    """Whether half or more of a column's (non-empty) values are paths, absolute or relative to
    `folder`, of image files (by suffix) that exist; `existing=False`: that merely name one."""

    def image_file(value: Any) -> bool:
        if not isinstance(value, str) or Path(value.strip()).suffix.lower() not in IMAGE_EXTENSIONS:
            return False
        return not existing or (folder / value.strip()).is_file()

    return bool(values) and 2 * sum(map(image_file, values)) >= len(values)


def image_column_of(table: Path, columns: ImageColumns) -> str | None:
    """The column of `table` holding its images' paths, or None where it is a table of texts: the
    one --image-column names; none where the --text-column columns are there (refused when they
    hold image paths); else the one column, labels aside, whose values are mostly image files."""
    sample = table_sample(table, IMAGE_SAMPLE_ROWS)
    listed = ", ".join(map(repr, sample)) or "none"
    if columns.image:
        if columns.image not in sample:
            raise DataError(
                f"{table}: no column {columns.image!r}; the columns are {listed} (use --image-column)"
            )
        return columns.image
    texts = split_columns(columns.text)
    if texts and all(c in sample for c in texts):
        paths = [c for c in texts if holds_image_paths(sample[c], table.parent, existing=False)]
        if paths:
            raise DataError(
                f"{table}: column {paths[0]!r} holds paths of image files, not texts; "
                f"read it as images with --image-column {paths[0]}"
            )
        return None
    rest = [c for c in sample if c not in split_columns(columns.label)]
    found = [c for c in rest if holds_image_paths(sample[c], table.parent)]
    if len(found) > 1:
        shown = ", ".join(map(repr, found))
        raise DataError(f"{table}: columns {shown} all hold image paths; name the input with --image-column")
    named = [c for c in rest if holds_image_paths(sample[c], table.parent, existing=False)]
    if not found and named:
        raise DataError(
            f"{table}: column {named[0]!r} names image files, but most are not found (paths are read "
            f"relative to {table.parent.resolve()}); correct them, or pass --image-column {named[0]} "
            "to skip the missing ones (a table of texts: name their column with --text-column)"
        )
    return found[0] if found else None


def image_table(path: Path, columns: ImageColumns) -> tuple[Path, str]:
    """(the table, its column of image paths) of a folder of images with its labels.csv (whose
    `file` column names them, else the column found or named) or of a table file of image paths."""
    if path.is_dir():
        table = labels_table(path)
        if table is None:
            raise DataError(f"{path}: no {LABELS_TABLE} beside the images (a `file` column and the labels)")
        header = _columns_of(table) if columns.image is None else []
        column = FILE_COLUMN if FILE_COLUMN in header else image_column_of(table, replace(columns, text=""))
        what = f"no column {FILE_COLUMN!r} and no column of image paths"
    elif is_table_file(path):
        table, column = path, image_column_of(path, columns)
        what = "no column of image paths"
    else:
        raise DataError(f"{path}: not a folder or a table; {_IMAGE_DATA}")
    if column is None:
        listed = ", ".join(map(repr, _columns_of(table))) or "none"
        raise DataError(
            f"{table}: {what}; the columns are {listed} (name the images' column with --image-column)"
        )
    return table, column


def image_paths_in(path: Path, image_column: str | None = None) -> list[str]:
    """What `graft predict --input FILE` predicts with an image model: the paths a table's column of
    image paths holds (`image_column`, else the one found), relative to the table's folder; a plain
    file's lines, relative to its folder."""
    if is_table_file(path):
        table, column = image_table(path, ImageColumns(image_column, "", ""))
        return [str(table.parent / name) for name in read_column(table, column)]
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    return [str(path.parent / line.strip()) for line in lines if line.strip()]


def _columns_of(table: Path) -> list[str]:
    return list(table_sample(table, 1))


def _table_splits(
    data: Path, val: str | Path | None, test: str | Path | None, val_fraction: float, seed: int,
    how: TableLabels | None, columns: ImageColumns,
) -> DataSplits:
    """Images named by tables, for every task (a class, several labels, numbers): a table file with
    a column of image paths (relative to the table, or absolute), or a folder of images and its
    labels.csv; the label column(s) read as for texts. --val and --test are tables or such folders."""
    how = how or TableLabels()
    columns = replace(columns, label=how.label_column)
    table, column = image_table(data, columns)
    rows = read_table(table, [column], how.label_column, "--image-column")
    task = labels_task(table, rows, how.label_column, how.task, how.separator)
    skipped: list[SkippedFile] = []
    train = read_image_table(table, column, task, how.label_column, skipped)

    def read(path: str | Path) -> Labelled:
        return read_image_table(*image_table(Path(path), columns), task, how.label_column, skipped)

    if val is not None:
        val_set, val_source = read(val), "folder" if Path(val).is_dir() else str(val)  # a table: as texts
    else:
        train_idx, val_idx = stratified_split(train.labels, val_fraction, seed, str(data), task.names)
        train, val_set = train.subset(train_idx), train.subset(val_idx)
        val_source = f"split:{val_fraction}"
    test_set = read(test) if test is not None else None
    name = data.resolve().name if data.is_dir() else f"{data.resolve().parent.name}-{data.stem}"
    return DataSplits(train, val_set, test_set, task.names, name, val_source, skipped, task)


def read_image_table(
    table: Path, column: str, task: Any, label_column: str, skipped: list[SkippedFile]
) -> Labelled:
    """The images a table's `column` names (relative to the table's folder, or absolute), with their
    labels as `task` encodes them; rows whose file is missing or unreadable, or whose label the task
    refuses, are skipped and named (one warning counts the missing and unreadable files)."""
    rows = read_table(table, [column], label_column, "--image-column")
    skipped.extend(rows.skipped)
    labels, refused = task.encode_all(rows.labels)
    out = {i for i, _ in refused}
    skipped.extend(SkippedFile(str(table.parent / rows.texts[i]), why) for i, why in refused)
    paths, kept, unreadable = [], [], []
    for k, i in enumerate(i for i in range(len(rows.texts)) if i not in out):
        path = table.parent / rows.texts[i]
        reason = "no such file" if not path.is_file() else _verify_image(path)
        if reason is not None:
            unreadable.append(SkippedFile(str(path), reason))
            continue
        paths.append(path)
        kept.append(k)
    _say_unreadable(table, column, unreadable, len(rows.texts), bool(paths))
    skipped.extend(unreadable)
    return Labelled(paths, labels[kept])


def _say_unreadable(
    table: Path, column: str, unreadable: list[SkippedFile], rows: int, some_read: bool
) -> None:
    """One warning counting a table's missing and unreadable images; an error when none was read."""
    if not unreadable:
        return
    first = unreadable[0]
    if not some_read:
        raise DataError(
            f"{table}: none of the {len(unreadable)} image(s) column {column!r} names can be read (first: "
            f"{first.path}: {first.reason}); paths are read relative to {table.parent.resolve()}"
        )
    warnings.warn(
        f"{table}: skipping {len(unreadable)} of {rows} image(s) missing or unreadable "
        f"(first: {first.path}: {first.reason})",
        UserWarning,
        stacklevel=4,
    )


def _cifar10_splits(root: Path, val_fraction: float, seed: int) -> DataSplits:
    images, labels, classes = load_cifar10(root, train=True)
    test_images, test_labels, _ = load_cifar10(root, train=False)
    train = Labelled(images, np.asarray(labels, dtype=np.int64))
    train_idx, val_idx = stratified_split(train.labels, val_fraction, seed, "cifar10", classes)
    test = Labelled(test_images, np.asarray(test_labels, dtype=np.int64))
    return DataSplits(
        train.subset(train_idx),
        train.subset(val_idx),
        test,
        tuple(classes),
        "cifar10",
        f"split:{val_fraction}",
    )
