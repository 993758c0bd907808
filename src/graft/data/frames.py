"""Data where people keep it: a pandas DataFrame, a Hugging Face `datasets` Dataset or DatasetDict,
or a folder written by its `save_to_disk`. (Parquet and feather files are tables: `graft.data.text`.)

pandas and `datasets` are optional extras, imported only when such data is given. The inputs are a
column of texts (several text columns are joined, as for CSV files), of image paths, or of images
(PIL images, arrays, or `datasets` Image features); a row whose label is missing, or whose input is
empty or unreadable, is skipped, counted and warned about, as the file readers do.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .images import image_problem, image_source, is_image_value
from .splits import DataSplits, SkippedFile, TableLabels, check_val_fraction
from .tables import TextTable, joined_text, labelled_splits, split_columns

__all__ = [
    "SPLIT_ROLES",
    "dataset_kind",
    "dataset_splits",
    "frame_inputs",
    "is_dataframe",
    "is_hf_dataset",
    "is_saved_dataset",
    "load_dataset_splits",
    "load_saved_dataset",
    "table_inputs",
    "trained_columns",
]

# a DatasetDict's split names (case-insensitive) and the role each plays; the first found wins
SPLIT_ROLES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}
ARROW_CHUNK_ROWS = 8192  # rows converted to Python objects at a time


def is_dataframe(data: Any) -> bool:
    """A pandas DataFrame, told without importing pandas."""
    return type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns")


def is_hf_dataset(data: Any) -> bool:
    """A Hugging Face `datasets.Dataset` or `DatasetDict`, told without importing `datasets`."""
    return type(data).__module__.split(".")[0] == "datasets" and type(data).__name__ in (
        "Dataset",
        "DatasetDict",
    )


def _missing(value: Any) -> bool:
    """None, NaN, pandas' NA and NaT: a cell with nothing in it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def _listed(names: Sequence[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names) or "none"


# --------------------------------------------------------------------------- choosing columns


def input_columns(
    where: str,
    columns: Sequence[str],
    text_column: str,
    label_columns: Sequence[str],
    is_image: Callable,
    image_column: str | None = None,
) -> list[str]:
    """The column(s) holding the inputs: the one `image_column` names; the ones `text_column` names
    when all are there (texts, or one column of images), else the one image column, else the one
    column left beside the labels."""
    if image_column:
        _require(where, columns, [image_column], "image_column=... / --image-column")
        return [image_column]
    named = split_columns(text_column)
    if named and all(c in columns for c in named):
        return named
    rest = [c for c in columns if c not in label_columns]
    images = [c for c in rest if is_image(c)]
    if len(images) == 1:
        return images
    if len(rest) == 1:
        return rest
    raise DataError(
        f"{where}: no column {text_column!r} and no single column of images; the columns are "
        f"{_listed(columns)} (name the input column with text_column=... or image_column=...)"
    )


def _require(where: str, columns: Sequence[str], needed: Sequence[str], option: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{where}: no column {_listed(missing)}; the columns are {_listed(columns)} (use {option})"
        )


def _sources(rows: Iterator[tuple[int, list[Any]]], images: bool) -> Iterator[tuple[int, Any, str]]:
    """(row, source, why it is unusable or ""): a text joined from its column(s), or an image."""
    for i, values in rows:
        if images:
            source = image_source(values[0]) if not _missing(values[0]) else None
            problem = "no image" if source is None else image_problem(source)
            yield i, source, problem or ""
        else:
            text = joined_text([None if _missing(v) else v for v in values])
            empty = not any(text) if isinstance(text, tuple) else not text  # a pair: both sides empty
            yield i, text, "empty text" if empty else ""


# --------------------------------------------------------------------------- pandas


def frame_inputs(
    frame: Any,
    y: Any,
    text_column: str,
    label_column: str,
    label_lists: bool,
    image_column: str | None = None,
) -> tuple[list[Any], Any, list[SkippedFile], list[str]]:
    """(inputs, their labels, skipped rows, the input columns) of a DataFrame: the labels are `y`
    when given, else the frame's label column(s) (several: label lists when `label_lists`, else a
    row of numbers). Image paths are read relative to the current folder."""
    where = "DataFrame"
    columns = [str(c) for c in frame.columns]
    label_columns = [] if y is not None else split_columns(label_column)
    _require(where, columns, label_columns, "label_column=... or fit(X, y)")
    is_image = lambda c: _first_is_image(_cells(frame, c))  # noqa: E731
    inputs = input_columns(where, columns, text_column, label_columns, is_image, image_column)
    if y is not None and len(y) != len(frame):
        raise DataError(f"fit(X, y): {len(frame)} rows but {len(y)} labels")
    labels = _frame_labels(frame, label_columns, label_lists) if y is None else y
    labels = labels if isinstance(labels, np.ndarray) else list(labels)  # an indicator array stays 2-D
    kept: list[int] = []
    sources: list[Any] = []
    skipped: list[SkippedFile] = []
    for i, source, problem in _frame_sources(frame, inputs, bool(image_column)):
        problem = problem or ("missing label" if _missing_label(labels[i]) else "")
        if problem:
            skipped.append(SkippedFile(f"{where} row {frame.index[i]}", problem))
        else:
            kept.append(i)
            sources.append(source)
    _warn_skipped(where, skipped, len(frame))
    if skipped and not sources:
        raise DataError(_nothing_usable(where, inputs, skipped, _cells(frame, inputs[0]).iloc[0]))
    return sources, _take(labels, kept), skipped, inputs


def _nothing_usable(where: str, inputs: list[str], skipped: list[SkippedFile], first_value: Any) -> str:
    """Why a DataFrame gave nothing to train on, in one line: every row was skipped."""
    first = skipped[0]
    if all(s.reason == "no such file" for s in skipped):
        return (
            f"{where}: none of the {len(skipped)} files that column {inputs[0]!r} names exists (first: "
            f"{str(first_value)!r}); relative paths are read from the current folder, {Path.cwd()}: make "
            "them absolute, or run from the folder they are relative to"
        )
    return f"{where}: all {len(skipped)} row(s) were skipped (first: {first.path}: {first.reason})"


def _cells(frame: Any, name: str) -> Any:
    """A column by the name the options give it: the text of its label (a column 0 is "0")."""
    return frame[next(c for c in frame.columns if str(c) == name)]


def _frame_sources(frame: Any, inputs: list[str], images: bool = False) -> Iterator[tuple[int, Any, str]]:
    """Each row's input; `images`: the column is images (named so), else its first value tells."""
    images = images or (len(inputs) == 1 and _first_is_image(_cells(frame, inputs[0])))
    values = zip(*(_cells(frame, c).tolist() for c in inputs), strict=True)
    return _sources(enumerate(map(list, values)), images)


def _first_is_image(column: Any) -> bool:
    present = column.dropna()
    return len(present) > 0 and is_image_value(present.iloc[0])


def _frame_labels(frame: Any, label_columns: list[str], label_lists: bool) -> Any:
    if len(label_columns) == 1:
        return _cells(frame, label_columns[0]).tolist()
    columns = [_cells(frame, c).tolist() for c in label_columns]
    if label_lists:  # several 0/1 columns: each row's labels are the columns holding a 1
        return [
            [c for c, v in zip(label_columns, row, strict=True) if not _missing(v) and v]
            for row in zip(*columns, strict=True)
        ]
    return np.asarray(columns, dtype=np.float32).T


def _missing_label(label: Any) -> bool:
    if isinstance(label, np.ndarray):
        return bool(np.isnan(label.astype(np.float64)).any())
    return _missing(label) or (isinstance(label, str) and not label.strip())


def _take(labels: Any, kept: list[int]) -> Any:
    if isinstance(labels, np.ndarray):
        return labels[kept]
    return [labels[i] for i in kept]


def _warn_skipped(where: str, skipped: list[SkippedFile], total: int) -> None:
    if skipped:
        first = skipped[0]
        warnings.warn(
            f"{where}: skipping {len(skipped)} of {total} row(s) (first: {first.path}: {first.reason})",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- Hugging Face datasets


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "Hugging Face datasets need the `datasets` extra: pip install 'graft-learn[datasets]'"
        ) from None
    return datasets


def is_saved_dataset(path: str | Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        return True
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def dataset_kind(path: str | Path) -> str | None:
    """`image` when a saved dataset has an Image column, `text` otherwise, None when `path` is no
    saved dataset: read from its JSON, without `datasets` (detection runs on every path)."""
    path = Path(path)
    if not is_saved_dataset(path):
        return None
    info = path / "dataset_info.json"
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits") or []
        info = path / str(splits[0]) / "dataset_info.json" if splits else info
    try:
        features = json.loads(info.read_text()).get("features") or {}
    except (OSError, ValueError):
        return "text"  # unreadable here: loading it says what is wrong
    is_image = any(isinstance(f, dict) and f.get("_type") == "Image" for f in features.values())
    return "image" if is_image else "text"


def load_saved_dataset(path: str | Path) -> Any:
    """A saved Dataset or DatasetDict, memory-mapped (nothing downloaded, nothing read twice)."""
    datasets = _datasets()
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:
        why = " ".join(str(err).split())[:160]
        raise DataError(f"{path}: cannot load the saved dataset ({why})") from None


def _parts(data: Any, where: str) -> dict[str, Any]:
    """{"train", "val", "test"} -> Dataset, from a DatasetDict's split names (a Dataset is train)."""
    if type(data).__name__ == "Dataset":
        return {"train": data}
    by_name = {str(name).lower(): name for name in data}
    parts = {}
    for role, names in SPLIT_ROLES.items():
        found = next((by_name[n] for n in names if n in by_name), None)
        if found is not None:
            parts[role] = data[found]
    if "train" not in parts:
        raise DataError(f"{where}: no `train` split; the splits are {_listed(list(data))}")
    return parts


def dataset_splits(
    data: Any, where: str, text_column: str, how: TableLabels, val_fraction: float, seed: int, name: str
) -> tuple[DataSplits, str]:
    """(train / validation / test splits, "image" or "text") of a Dataset or DatasetDict: its splits
    as they are named (train; validation, valid, val or dev; test), else a stratified validation
    split; a ClassLabel column's names are the classes. Labels read as in a CSV file (`how`)."""
    check_val_fraction(val_fraction)
    parts = _parts(data, where)
    train = parts["train"]
    columns = list(train.column_names)
    label_columns = split_columns(how.label_column)
    _require(where, columns, label_columns, "label_column=... / --label-column")
    is_image = lambda c: type(train.features[c]).__name__ == "Image"  # noqa: E731
    inputs = input_columns(where, columns, text_column, label_columns, is_image)
    images = len(inputs) == 1 and is_image(inputs[0])
    tables: dict[str, TextTable | None] = {"val": None, "test": None}
    for role, part in parts.items():
        _require(f"{where} [{role}]", list(part.column_names), [*inputs, *label_columns], "--text-column")
        tables[role] = _dataset_table(part, f"{where} [{role}]", inputs, label_columns, images)
    splits = labelled_splits(where, tables, how, val_fraction, seed, name, f"{where} [val]")
    return replace(splits, input_columns=tuple(inputs)), "image" if images else "text"


def _dataset_table(
    part: Any, where: str, inputs: list[str], label_columns: list[str], images: bool
) -> TextTable:
    """One split as a table: each row's input (a text, or an image's bytes or path) and its label
    as text (a ClassLabel's name), the unusable rows skipped with their row number."""
    table = TextTable([], [])
    labels = zip(*(_column(part, c) for c in label_columns), strict=True)
    values = zip(*(_column(part, c) for c in inputs), strict=True)
    for (i, source, problem), row in zip(_sources(enumerate(map(list, values)), images), labels, strict=True):
        texts = [None if _missing(v) else str(v) for v in row]
        empty = [c for c, v in zip(label_columns, texts, strict=True) if v is None or not v.strip()]
        problem = problem or (f"missing label in column {empty[0]!r}" if empty else "")
        if problem:
            table.skipped.append(SkippedFile(where, f"row {i + 1}: {problem}"))
            continue
        table.texts.append(source)
        if len(texts) == 1:
            table.raw_labels.add(texts[0])
            table.labels.append(texts[0].strip())
        else:
            table.labels.append(tuple(v.strip() for v in texts))
    _warn_skipped(where, table.skipped, len(table.texts) + len(table.skipped))
    return table


def _column(part: Any, column: str) -> Iterator[Any]:
    """A column's values, converted from Arrow a chunk of rows at a time (the Dataset's row order,
    indices applied): an Image column as its {"bytes", "path"} records, never decoded; a
    ClassLabel's as its names (None for -1, no label)."""
    feature = part.features[column]
    names = feature.names if type(feature).__name__ == "ClassLabel" else None
    arrow = part.with_format("arrow")
    for start in range(0, len(part), ARROW_CHUNK_ROWS):
        for value in arrow[start : start + ARROW_CHUNK_ROWS].column(column).to_pylist():
            if names is None:
                yield value
            else:
                yield names[value] if value is not None and 0 <= value < len(names) else None


def load_dataset_splits(
    data: str,
    val: str | None,
    test: str | None,
    text_column: str,
    how: TableLabels,
    val_fraction: float,
    seed: int,
) -> DataSplits:
    """`graft train SAVED_DATASET`: a folder written by `save_to_disk`, its own splits read."""
    if val or test:
        raise ConfigError(f"--val / --test: {data} is a saved dataset, whose own splits are read; drop them")
    name = Path(data).resolve().name
    loaded = load_saved_dataset(data)
    return dataset_splits(loaded, str(data), text_column, how, val_fraction, seed, name)[0]


# --------------------------------------------------------------------------- predicting on a table


def trained_columns(meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the input columns, the label columns) a bundle's model was trained on: graft.json's
    `input_columns` (a DataFrame's or dataset's), else its recipe's text column."""
    recipe = meta.get("recipe") or {}
    inputs = meta.get("input_columns") or split_columns(recipe.get("text_column") or "text")
    return [str(c) for c in inputs], split_columns(recipe.get("label_column") or "label")


def table_inputs(data: Any, meta: dict[str, Any]) -> list[Any]:
    """A DataFrame's or Dataset's inputs to predict on, one per row, read as training read them:
    from the columns the model was trained on (`trained_columns`), else from the table's one image
    column, or its one column beside the label columns; else a DataError naming the missing ones."""
    where = type(data).__name__
    if where == "DatasetDict":
        raise DataError(f"DatasetDict: predict on one of its splits ({_listed(list(data))}): data['test']")
    frame = is_dataframe(data)
    columns = [str(c) for c in (data.columns if frame else data.column_names)]
    wanted, labels = trained_columns(meta)
    if frame:
        is_image = lambda c: _first_is_image(_cells(data, c))  # noqa: E731
    else:
        is_image = lambda c: type(data.features[c]).__name__ == "Image"  # noqa: E731
    try:
        chosen = input_columns(where, columns, ",".join(wanted), labels, is_image)
    except DataError:
        missing = [c for c in wanted if c not in columns]
        raise DataError(
            f"{where}: no column {_listed(missing)}, which the model was trained on; the columns are "
            f"{_listed(columns)} (rename yours, or give a table of one input column)"
        ) from None
    if frame:
        return [source for _, source, _ in _frame_sources(data, chosen)]
    values = zip(*(_column(data, c) for c in chosen), strict=True)
    images = len(chosen) == 1 and is_image(chosen[0])
    return [source for _, source, _ in _sources(enumerate(map(list, values)), images)]
