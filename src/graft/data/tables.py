"""The one table reader: CSV, TSV, JSONL, parquet and feather files, for texts and for images named
by path alike, and the labelled splits made from the tables read.

A row with bad encoding, an empty input or a missing label is skipped, counted and named by its
line (or row) number; a missing column is a one-line error that lists the columns the file has.
Parquet and feather files stream in record batches of the needed columns alone (the `tables`
extra).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .splits import DataSplits, Labelled, SkippedFile, TableLabels, stratified_split

ARROW_SUFFIXES = (".parquet", ".feather")  # columnar: streamed with pyarrow (the `tables` extra)
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", *ARROW_SUFFIXES)
ARROW_BATCH_ROWS = 8192  # rows per record batch read from a parquet or feather file


@dataclass
class TextTable:
    texts: list[Any]  # texts, sentence pairs (2-tuples) or, for an image table, each row's file or image
    labels: list[Any]  # each row's label text, or a tuple of texts with several label columns
    skipped: list[SkippedFile] = field(default_factory=list)
    raw_labels: set[str] = field(default_factory=set)  # as written, before surrounding whitespace is stripped


def split_columns(spec: str | Sequence[str]) -> list[str]:
    """`--text-column title,body` (or repeated) -> ["title", "body"]."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    return [c.strip() for part in parts for c in part.split(",") if c.strip()]


def read_table(
    path: str | Path, input_columns: Sequence[str], label_column: str, input_option: str = "--text-column"
) -> TextTable:
    """A table file's rows: each row's input column(s) and label(s). `input_option`: the option that
    names the input column, for the error a missing one gives (an image table's is --image-column)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported text file type {suffix!r}; use .csv, .tsv, .jsonl, .parquet or .feather"
        )
    columns = Columns(list(input_columns), split_columns(label_column), input_option)
    unit = "row" if suffix in ARROW_SUFFIXES else "line"
    return _collect(path, _rows(path, columns), columns, unit)


def read_column(path: Path, input_column: str) -> list[str | tuple[str, str]]:
    """A table's input column(s), unlabelled: each row's text (or pair, or image path), empty ones
    left out."""
    columns = Columns(split_columns(input_column))
    values: list[str | tuple[str, str]] = []
    for _, row, _reason in _rows(path, columns):
        if row is not None:
            _require_columns(path, row, columns)
            text = joined_text([row[c] for c in columns.inputs])
            if text if isinstance(text, str) else any(text):
                values.append(text)
    return values


Row = tuple[int, dict[str, object] | None, str | None]  # (line number, row, reason it is unusable)


@dataclass(frozen=True)
class Columns:
    """The columns a table is read by: its inputs, its labels, and the option naming the inputs."""

    inputs: list[str]
    labels: list[str] = field(default_factory=list)
    input_option: str = "--text-column"

    @property
    def needed(self) -> list[str]:
        return [*self.inputs, *self.labels]


def _rows(path: Path, columns: Columns) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix in ARROW_SUFFIXES:
        return _arrow_rows(path, columns)
    return _jsonl_rows(path) if suffix in (".jsonl", ".ndjson") else _delimited_rows(path, suffix)


def table_sample(path: str | Path, limit: int = 200) -> dict[str, list[Any]]:
    """A table's columns, each with its non-empty values in the first `limit` rows: enough to tell a
    column of image paths from one of texts without reading the whole table."""
    path = Path(path)
    if path.suffix.lower() in ARROW_SUFFIXES:
        names, _ = _arrow_batches(path, [])
        rows = _arrow_rows(path, Columns(list(names)), batch_rows=limit)  # a parquet file: no more read
    else:
        rows = _rows(path, Columns([]))
    sample: dict[str, list[Any]] = {}
    for _, row, _reason in itertools.islice(rows, limit):
        for name, value in (row or {}).items():
            values = sample.setdefault(str(name), [])
            if not _blank(value):
                values.append(value)
    return sample


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError(
            "parquet and feather files need the `tables` extra: pip install 'graft-learn[tables]'"
        ) from None
    return pyarrow


def _arrow_batches(
    path: Path, columns: list[str], batch_rows: int = ARROW_BATCH_ROWS
) -> tuple[list[str], Iterator[Any]]:
    """(the file's column names, its record batches holding `columns` alone): a parquet file is read
    batch by batch (`iter_batches`), a feather file memory-mapped, so a large file never sits in
    memory whole, and the columns not asked for are never read."""
    pa = _pyarrow()
    try:
        if path.suffix.lower() == ".parquet":
            parquet = pa.parquet.ParquetFile(path)
            names = parquet.schema_arrow.names
            wanted = [c for c in columns if c in names]
            return names, parquet.iter_batches(batch_size=batch_rows, columns=wanted)
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        names = reader.schema.names
        wanted = [c for c in columns if c in names]
        batches = (reader.get_batch(i).select(wanted) for i in range(reader.num_record_batches))
        return names, batches
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable {path.suffix} file ({_one_line(err)})") from None


def _arrow_rows(path: Path, columns: Columns, batch_rows: int = ARROW_BATCH_ROWS) -> Iterator[Row]:
    names, batches = _arrow_batches(path, columns.needed, batch_rows)
    _require_columns(path, dict.fromkeys(names), columns)  # before any row: names every column there
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield number, {k: None if _is_nan(v) else v for k, v in row.items()}, None


def _is_nan(value: object) -> bool:
    """A float NaN, which pandas writes for a missing value: read as missing, not as the text 'nan'."""
    return isinstance(value, float) and math.isnan(value)


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield number, None


def _delimited_lines(path: Path, bad: set[int]) -> Iterator[str]:
    """Lines for the csv reader, split at \\n, \\r\\n or a lone \\r (old Mac / Excel exports). A line
    that is not UTF-8 is decoded with replacement characters, so its quotes still count, and its
    number goes to `bad`: the whole record holding it is skipped, even one spanning several lines."""
    number = 0
    with open(path, "rb") as f:
        for chunk in f:
            for raw in chunk.splitlines(keepends=True):
                number += 1
                try:
                    yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    bad.add(number)
                    yield raw.decode("utf-8", errors="replace")


def _next_record(path: Path, reader: Any) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as err:  # a field over csv's size limit: usually a quote left open
        raise DataError(
            f"{path}: line {reader.line_num}: {err}: a quote left open (it swallows the lines after it) "
            "or a text that long; fix or shorten that row"
        ) from None


def _delimited_rows(path: Path, suffix: str) -> Iterator[Row]:
    delimiter = "\t" if suffix == ".tsv" else ","
    bad: set[int] = set()
    reader = csv.reader(_delimited_lines(path, bad), delimiter=delimiter)
    header = _next_record(path, reader)
    if header is None:
        raise DataError(f"{path} is empty: it needs a header row and one row per text")
    if bad:
        raise DataError(f"{path}: the header row is not valid UTF-8; save the file as UTF-8")
    start = reader.line_num + 1  # the line the next record starts on
    while (fields := _next_record(path, reader)) is not None:
        lines, start = range(start, reader.line_num + 1), reader.line_num + 1
        if bad.intersection(lines):  # reported at the record's first line
            yield lines[0], None, "not valid UTF-8"
        elif fields:  # a blank line is no row
            if len(fields) != len(header):
                yield lines[0], None, f"{len(fields)} fields where the header has {len(header)}"
            else:
                yield lines[0], dict(zip(header, fields, strict=True)), None


def _jsonl_rows(path: Path) -> Iterator[Row]:
    for number, text in _decoded_lines(path):
        if text is None:
            yield number, None, "not valid UTF-8"
        elif text.strip():
            try:
                row = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested too deep
                yield number, None, f"not valid JSON ({getattr(err, 'msg', 'nested too deeply')})"
                continue
            yield (number, row, None) if isinstance(row, dict) else (number, None, "not a JSON object")


def _collect(path: Path, rows: Iterator[Row], columns: Columns, unit: str = "line") -> TextTable:
    table = TextTable([], [])
    text_columns = columns.inputs
    label_columns = columns.labels  # several: one 0/1 column per label, or per target
    checked = False
    for number, row, reason in rows:
        if row is not None and not checked:
            _require_columns(path, row, columns)
            checked = True
        if row is not None:
            reason = _row_problem(row, text_columns, label_columns)
        if reason:
            table.skipped.append(SkippedFile(str(path), f"{unit} {number}: {reason}"))
            continue
        assert row is not None
        table.texts.append(joined_text([row[c] for c in text_columns]))
        if len(label_columns) == 1:
            table.raw_labels.add(str(row[label_columns[0]]))
            table.labels.append(str(row[label_columns[0]]).strip())
        else:
            table.labels.append(tuple(str(row[c]).strip() for c in label_columns))
    return table


def joined_text(values: Sequence[object]) -> str | tuple[str, str]:
    """One example's text from a row's text column(s): two columns are a sentence pair, a 2-tuple
    (the text modality encodes it as the tokenizer's pair); one, or three and more, are one text:
    each stripped, empty ones left out, joined by lines."""
    if len(values) == 2:
        first, second = ("" if _blank(v) else str(v).strip() for v in values)
        return first, second
    return "\n".join(str(v).strip() for v in values if not _blank(v))


def _blank(value: object) -> bool:
    return value is None or not str(value).strip()


def _require_columns(path: Path, row: dict[str, object], columns: Columns) -> None:
    """A one-line error naming the missing columns, the table's, and the option(s) that name them."""
    missing = [c for c in columns.needed if c not in row]
    if missing:
        options = [columns.input_option] if any(c in columns.inputs for c in missing) else []
        options += ["--label-column"] if any(c in columns.labels for c in missing) else []
        raise DataError(
            f"{path}: no column {', '.join(map(repr, missing))}; the columns are "
            f"{', '.join(map(repr, row))} (use {' / '.join(options)})"
        )


def _row_problem(row: dict[str, object], text_columns: list[str], label_columns: list[str]) -> str | None:
    for label_column in label_columns:
        label = row.get(label_column)
        if label is None or not str(label).strip():
            return f"missing label in column {label_column!r}"
    if all(_blank(row.get(c)) for c in text_columns):
        return "empty text"
    return None


VAL_NAMES = ("val", "valid", "validation", "dev")  # a table of validation rows: dev.csv, val.csv, ...


def find_table(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in TABLE_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


# --------------------------------------------------------------------------- labelled splits


def labelled_splits(
    where: str | Path,
    tables: dict[str, TextTable | None],
    how: TableLabels,
    val_fraction: float,
    seed: int,
    name: str,
    val_source: str,
) -> DataSplits:
    """Splits from read tables ("train", and "val" and "test" or None): the training labels decide
    the task and its classes, the other rows are encoded by it (the ones it refuses are skipped);
    without a "val" table a stratified `val_fraction` of train is held out."""
    learned = labels_task(Path(where), tables["train"], how.label_column, how.task, how.separator)
    skipped: list[SkippedFile] = []
    train = _labelled(tables["train"], learned, skipped)
    if not len(train):
        why = skipped[-1].reason if skipped else "no rows"
        what = learned.describe
        raise DataError(f"{where}: no training row has a label {what} can take ({why}); check --task")
    val_table, test_table = tables.get("val"), tables.get("test")
    if val_table is not None:
        val_set = _labelled(val_table, learned, skipped)
    else:
        train_idx, val_idx = stratified_split(train.labels, val_fraction, seed, str(where), learned.names)
        train, val_set = train.subset(train_idx), train.subset(val_idx)
        val_source = f"split:{val_fraction}"
    test_set = _labelled(test_table, learned, skipped) if test_table is not None else None
    return DataSplits(train, val_set, test_set, learned.names, name, val_source, skipped, learned)


def labels_task(path: Path, table: TextTable, label_column: str, task: str, separator: str) -> Any:
    """The task (graft.tasks) the training labels call for, `--task` deciding; single-label keeps
    its checks: at least 2 classes, labels differing in case or whitespace said once."""
    from ..tasks import resolve_task

    learned = resolve_task(task, table.labels, split_columns(label_column), separator)
    classes = learned.names
    if learned.name != "single":
        if not classes:
            raise DataError(f"{path}: no usable rows to learn {learned.describe} from")
        return learned
    if len(classes) < 2:
        found = ", ".join(map(repr, classes)) or f"no usable rows, {len(table.skipped)} skipped"
        raise DataError(
            f"{path}: training needs at least 2 labels, found {len(classes)} ({found}); add rows with "
            "other labels, or point --label-column at the column that holds them"
        )
    _warn_case_collisions(path, classes)
    _warn_whitespace_merges(path, table.raw_labels)
    return learned


def _warn_case_collisions(path: Path, labels: Iterable[str]) -> None:
    """One warning naming every group of labels that differ only in case ('Pos', 'pos'): they
    are kept as different classes, which is rarely what was meant."""
    groups: dict[str, list[str]] = defaultdict(list)
    for label in sorted(set(labels)):
        groups[label.casefold()].append(label)
    clashes = [names for names in groups.values() if len(names) > 1]
    if not clashes:
        return
    named = "; ".join(_and_list([repr(n) for n in names]) for names in clashes)
    warnings.warn(
        f"{path}: labels {named} differ only in case; they are kept as different classes "
        "(make them identical if they mean the same class)",
        UserWarning,
        stacklevel=3,
    )


def _warn_whitespace_merges(path: Path, raw_labels: Iterable[str]) -> None:
    """One warning naming every group of labels that differ only in surrounding whitespace ('pos',
    'pos '): they are merged into one class, the stripped label, which is what is nearly always meant."""
    groups: dict[str, list[str]] = defaultdict(list)
    for label in sorted(set(raw_labels)):
        groups[label.strip()].append(label)
    merged = [(name, spellings) for name, spellings in groups.items() if len(spellings) > 1]
    if not merged:
        return
    named = "; ".join(f"{_and_list([repr(s) for s in spellings])} -> {name!r}" for name, spellings in merged)
    warnings.warn(
        f"{path}: labels that differ only in surrounding whitespace are merged into one class: {named}",
        UserWarning,
        stacklevel=3,
    )


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _labelled(table: TextTable, task: Any, skipped: list[SkippedFile]) -> Labelled:
    """The table's rows whose label the task takes; the others skipped with the reason."""
    skipped.extend(table.skipped)
    labels, refused = task.encode_all(table.labels)
    skipped.extend(SkippedFile(_shown(table.texts[i], i), why) for i, why in refused)
    out = set(i for i, _ in refused)
    return Labelled([t for i, t in enumerate(table.texts) if i not in out], labels)


def _shown(source: Any, index: int) -> str:
    """A skipped row as a report names it: a text's (or a sentence pair's) start, a file, else its row."""
    if isinstance(source, tuple) and all(isinstance(t, str) for t in source):
        source = " ‖ ".join(source)
    return str(source)[:60] if isinstance(source, str | Path) else f"row {index + 1}"
