"""Fuzzed loaders (hypothesis, fixed seed): whatever bytes a user's files hold, graft's readers end
in one of two ways, never a traceback:

- a clear one-line graft error (a `GraftError`) that names the file, or
- a counted skip that names the file (and, in a table, the line) and says why (`SkippedFile`).

Images go through the real readers: `load_rgb` (every decoder: training, evaluation, prediction),
the folder scan's header check, and the batch pipeline. Tables go through `read_text_data` (CSV,
TSV, JSONL) and `load_text_data` (classes and splits). What graft decides for labels:

- surrounding whitespace is stripped, so 'pos' and ' pos ' are one class, with a warning;
- labels that differ only in case ('Pos', 'pos') stay different classes, with a warning;
- a blank line is no row (like csv and pandas); a row whose fields are all empty is a skip.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import warnings
import zlib
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from graft.backbones import Preprocessing
from graft.data.images import _verify_image, load_rgb
from graft.data.pipeline import iterate_batches
from graft.data.text import load_text_data, read_text_data
from graft.errors import DataError, UnreadableImage

FUZZ = settings(
    derandomize=True,  # the same examples every run: a failure reproduces
    database=None,  # nothing to replay: derandomized
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PREP = Preprocessing(input_size=16)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder for every example (hypothesis runs a test body many times per fixture)."""
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------- images


def _one_line(message: str, path: Path) -> None:
    assert "\n" not in message and str(path) in message, message


def check_image(path: Path) -> str | None:
    """Every image reader on `path`: the same verdict, a one-line reason naming it, no traceback.
    Returns why it is unreadable, or None when it decoded."""
    header = _verify_image(path)  # the folder scan's cheap check: a reason or None, never raises
    assert header is None or (isinstance(header, str) and "\n" not in header)
    try:
        image = load_rgb(path)
    except UnreadableImage as err:
        _one_line(str(err), path)
        decoded = str(err)
    else:
        assert image.mode == "RGB" and min(image.size) >= 1
        decoded = None
    (batch,) = list(iterate_batches([str(path)], PREP, batch_size=1, workers=0))
    if decoded is None:
        assert batch.failures == [] and tuple(batch.images.shape) == (1, 3, 16, 16)
    else:
        assert len(batch.failures) == 1 and len(batch.images) == 0
        _one_line(batch.failures[0][1], path)
    return decoded


@cache
def _encoded(fmt: str) -> bytes:
    """A valid 48x40 noise image in `fmt`: the bytes truncation and bit flips start from."""
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    image = Image.fromarray(noise)
    (image.convert("P") if fmt == "GIF" else image).save(buffer, format=fmt)
    return buffer.getvalue()


EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x01\x00\x00WEBPVP8 ", b"BM"]


@FUZZ
@given(
    magic=st.sampled_from(MAGIC),
    body=st.binary(max_size=3000),
    ext=st.sampled_from(list(EXTENSIONS.values())),
)
def test_random_bytes_named_as_an_image_are_a_named_one_line_skip(work, magic, body, ext):
    """Random bytes, some behind a real format's signature so that decoders (not just the format
    sniffing) see them, named .jpg/.png/...: a skip with a one-line reason naming the file."""
    path = work / f"random{ext}"
    path.write_bytes(magic + body)
    assert check_image(path) is not None


@FUZZ
@given(fmt=st.sampled_from(list(EXTENSIONS)), keep=st.floats(0.0, 0.98))
def test_truncated_images_are_a_named_one_line_skip_or_decode(work, fmt, keep):
    """A JPEG/PNG/WEBP/GIF/BMP cut anywhere: either still decodable (a PNG missing only its end
    chunk) or a skip with a one-line reason naming the file."""
    data = _encoded(fmt)
    path = work / f"truncated{EXTENSIONS[fmt]}"
    path.write_bytes(data[: int(len(data) * keep)])
    check_image(path)


@FUZZ
@given(
    fmt=st.sampled_from(list(EXTENSIONS)),
    flips=st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(1, 255)), min_size=1, max_size=8),
)
def test_bit_flipped_images_decode_or_are_a_named_one_line_skip(work, fmt, flips):
    data = bytearray(_encoded(fmt))
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    path = work / f"flipped{EXTENSIONS[fmt]}"
    path.write_bytes(bytes(data))
    check_image(path)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_a_decompression_bomb_is_a_named_skip_without_allocating_it(tmp_path):
    """A 150-byte PNG declaring 100,000 x 100,000 pixels (30 GB decoded): Pillow's
    MAX_IMAGE_PIXELS guard refuses it before any pixel is allocated; graft skips it by name."""
    import resource

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(100_000, 100_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reason = check_image(path)
    assert reason is not None and "exceeds limit" in reason and "decompression bomb" in reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: nothing decoded


def test_a_zero_byte_image_is_a_named_skip(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert "cannot identify image file" in check_image(path)


def _animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (24, 16), colour) for colour in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def _cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(path)  # no cyan/black, full magenta+yellow: red
    return path


def _png16(path: Path) -> Path:
    ramp = (np.arange(24 * 16).reshape(16, 24) * 65535 // (24 * 16 - 1)).astype(np.uint16)  # 0 .. 65535
    Image.fromarray(ramp).save(path)
    return path


UNUSUAL = {"animated.gif": _animated_gif, "cmyk.jpg": _cmyk_jpeg, "sixteen-bit.png": _png16}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_animated_gif_cmyk_jpeg_and_16_bit_png_load_fine(tmp_path, name):
    path = UNUSUAL[name](tmp_path / name)
    assert check_image(path) is None
    pixels = np.asarray(load_rgb(path))
    assert pixels.shape == (16, 24, 3)
    if name == "animated.gif":
        assert Image.open(path).n_frames == 3
        assert tuple(pixels[8, 12]) == (250, 0, 0)  # the first frame
    elif name == "cmyk.jpg":
        assert Image.open(path).mode == "CMYK"
        r, g, b = (int(v) for v in pixels[8, 12])
        assert r > 200 and g < 60 and b < 60
    else:
        assert Image.open(path).mode.startswith("I")
        assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255  # 16 bits scaled to 8


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]
SAVE_AS = {"CMYK": "JPEG", "YCbCr": "JPEG", "F": "TIFF", "I": "TIFF"}


@FUZZ
@given(
    mode=st.sampled_from(MODES), width=st.integers(1, 64), height=st.integers(1, 64), seed=st.integers(0, 9)
)
def test_any_valid_image_of_any_mode_and_size_loads_as_rgb(work, mode, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image.convert(mode)
    fmt = SAVE_AS.get(mode, "PNG")
    path = work / f"valid-{mode.replace(';', '')}.{fmt.lower()}"
    image.save(path, format=fmt)
    assert check_image(path) is None
    assert load_rgb(path).size == (width, height)


def test_train_and_predict_on_a_folder_of_every_bad_and_odd_image(tmp_path, capsys):
    """The CLI on all of the above at once: training and eval skip exactly the unreadable files
    (counted and named), the odd but valid ones are used; predict reports each bad one, exit 3."""
    from conftest import make_image_folder

    from graft.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4, seed=0)
    bad = {
        data / "red" / "bomb.png": _png_header(100_000, 100_000),
        data / "red" / "zero.jpg": b"",
        data / "green" / "noise.png": bytes(range(256)) * 4,
        data / "blue" / "cut.jpg": _encoded("JPEG")[:300],
    }
    for path, content in bad.items():
        path.write_bytes(content)
    odd = [
        builder(data / colour / name)
        for (name, builder), colour in zip(UNUSUAL.items(), ("red", "green", "blue"), strict=True)
    ]
    argv = ["train", str(data), "--backbone", "timm/test_efficientnet", "--weights", "random"]
    argv += ["--strategy", "linear", "--image-size", "32", "--out", str(tmp_path / "run"), "--json"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert sorted(s["path"] for s in report["skipped_files"]) == sorted(map(str, bad))
    assert report["data"]["train"] + report["data"]["val"] == 12 + len(odd)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), str(data), "--json"]) == 0  # the modality's read_labelled
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert sorted(s["path"] for s in metrics["skipped_files"]) == sorted(map(str, bad))
    assert metrics["n"] == 12 + len(odd)
    assert main(["predict", str(tmp_path / "run"), *map(str, [*bad, *odd])]) == 3
    out, err = capsys.readouterr()
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == sorted(map(str, odd))
    assert all(f"error: {path}" in err for path in bad)


# --------------------------------------------------------------------------- tables

TEXT_CHARS = st.sampled_from(list("ab zé€😀,;\"'\t\n\r\\{}[]:\x00\u2028\x85")) | st.characters(
    blacklist_categories=("Cs",), blacklist_characters="@"
)
LABELS = ["pos", "neg", " pos", "pos ", "\tneg", "Pos", "NEG", "", "  "]
ROW = st.fixed_dictionaries(
    {
        "text": st.text(TEXT_CHARS, max_size=30),
        "label": st.sampled_from(LABELS),
        "bad_bytes": st.sampled_from([False] * 6 + [True]),  # latin-1 bytes in a UTF-8 file
        "blank_before": st.sampled_from([False] * 6 + [True]),
    }
)
BAD = b"caf\xe9 "  # latin-1 'é' then a space: never valid UTF-8
MARK = "@@BAD@@"  # written where BAD goes; '@' is not in the texts


def _table_bytes(fmt: str, rows: list[dict], bom: bool, label_column: str) -> tuple[bytes, list[int]]:
    """The file, and the line each row's record starts on."""
    out = b"\xef\xbb\xbf" if bom else b""
    if fmt == "jsonl":
        starts = []
        for i, row in enumerate(rows):
            if row["blank_before"]:
                out += b"   \n"
            starts.append(out.count(b"\n") + 1)
            text = (MARK if row["bad_bytes"] else "") + row["text"]
            line = json.dumps({"text": text, label_column: row["label"]}, ensure_ascii=i % 2 == 0)
            out += (line + "\n").encode("utf-8").replace(MARK.encode(), BAD)
        return out, starts

    def line(fields: list[str]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter="\t" if fmt == "tsv" else ",").writerow(fields)
        return buffer.getvalue().encode("utf-8").replace(MARK.encode(), BAD)

    out += line(["text", label_column])
    starts = []
    for row in rows:
        if row["blank_before"]:
            out += b"\r\n"
        starts.append(len(out.splitlines()) + 1)
        out += line([(MARK if row["bad_bytes"] else "") + row["text"], row["label"]])
    return out, starts


def _expected(rows: list[dict], starts: list[int]) -> tuple[list[tuple[str, str]], list[str]]:
    kept, skipped = [], []
    for row, start in zip(rows, starts, strict=True):
        if row["bad_bytes"]:
            skipped.append(f"line {start}: not valid UTF-8")
        elif not row["label"].strip():
            skipped.append(f"line {start}: missing label in column 'label'")
        elif not row["text"].strip():
            skipped.append(f"line {start}: empty text")
        else:
            kept.append((row["text"].strip(), row["label"].strip()))
    return kept, skipped


@FUZZ
@given(
    fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
    rows=st.lists(ROW, max_size=12),
    bom=st.booleans(),
    label_column=st.sampled_from(["label"] * 4 + ["lbl"]),
)
def test_tables_read_back_every_row_or_name_why_not(work, fmt, rows, bom, label_column):
    """Any texts (quotes, delimiters, newlines, NULs, emoji), labels with stray whitespace or case,
    latin-1 bytes in a UTF-8 file, a BOM, blank lines, a missing label column: every row is read
    back exactly (stripped) or skipped as 'line N: why' at the line its record starts on; a missing
    column is one DataError listing the columns the file has."""
    content, starts = _table_bytes(fmt, rows, bom, label_column)
    path = work / f"table.{fmt}"
    path.write_bytes(content)
    kept, skipped = _expected(rows, starts)
    usable = any(not row["bad_bytes"] for row in rows)
    if label_column != "label" and usable:
        with pytest.raises(DataError, match=r"no column 'label'; the columns are .*'lbl'") as err:
            read_text_data(path, ["text"], "label")
        _one_line(str(err.value), path)
        return
    if label_column != "label":
        kept, skipped = [], [s for s in skipped if "UTF-8" in s]
    table = read_text_data(path, ["text"], "label")
    assert list(zip(table.texts, table.labels, strict=True)) == kept
    assert [s.reason for s in table.skipped] == skipped
    assert all(s.path == str(path) for s in table.skipped)


@FUZZ
@given(rows=st.lists(ROW, max_size=16), fmt=st.sampled_from(["csv", "jsonl"]))
def test_loading_a_table_gives_stripped_classes_and_warns_of_merges_and_case(work, rows, fmt):
    """load_text_data: the classes are the distinct stripped labels; spellings merged by stripping
    and labels apart only by case are each one warning. Each table is known beforehand to load or
    to be refused, and why: fewer than 2 labels, or a label with a single row (it cannot be in both
    the training and the validation split), is one DataError saying so; anything else loads."""
    content, starts = _table_bytes(fmt, rows, False, "label")
    path = work / f"load.{fmt}"
    path.write_bytes(content)
    kept, _ = _expected(rows, starts)
    counts = Counter(label for _, label in kept)
    refusal = None
    if len(counts) < 2:
        refusal = "training needs at least 2 labels"
    elif min(counts.values()) < 2:
        refusal = "a single example, too few to split off validation data"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if refusal is not None:
            with pytest.raises(DataError, match=refusal) as err:
                load_text_data(str(path), None, None, ["text"], "label", 0.25, 0)
            _one_line(str(err.value), path)
            return
        splits = load_text_data(str(path), None, None, ["text"], "label", 0.25, 0)
    classes = sorted({label for _, label in kept})
    assert list(splits.classes) == classes
    assert len(splits.train) + len(splits.val) == len(kept)
    messages = [str(w.message) for w in caught]
    raw = {row["label"] for row in rows if (row["text"].strip(), row["label"].strip()) in kept}
    merged = len(raw) > len({label.strip() for label in raw})
    assert any("surrounding whitespace" in m for m in messages) == merged
    cased = len(classes) > len({c.casefold() for c in classes})
    assert any("differ only in case" in m for m in messages) == cased


def test_label_whitespace_merges_and_case_stays_apart(tmp_path):
    """The decision, spelt out: ' pos' and 'pos ' join 'pos' (warned); 'Pos' stays its own class (warned)."""
    rows = [
        (f"text {i}", label)
        for i, label in enumerate(["pos", " pos", "pos ", "neg", "neg", "Pos", "Pos"] * 2)
    ]
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    with pytest.warns(UserWarning) as caught:
        splits = load_text_data(str(path), None, None, ["text"], "label", 0.3, 0)
    assert splits.classes == ("Pos", "neg", "pos")
    messages = " | ".join(str(w.message) for w in caught)
    assert (
        "' pos', 'pos' and 'pos ' -> 'pos'" in messages and "'Pos' and 'pos' differ only in case" in messages
    )


def test_a_quoted_field_over_lines_with_latin_1_bytes_is_one_skipped_row(tmp_path):
    """Before: the bad line was blanked, its opening quote lost, and the field's other lines were
    read as a row of their own ('more"', 'pos'). Now the record is skipped whole, at its first line."""
    path = tmp_path / "t.csv"
    path.write_bytes(b'text,label\n"caf\xe9\nmore",pos\nfine,neg\n')
    table = read_text_data(path, ["text"], "label")
    assert (table.texts, table.labels) == (["fine"], ["neg"])
    assert [s.reason for s in table.skipped] == ["line 2: not valid UTF-8"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"text,label\r" + b"hi,pos\r" + b"ho,neg\r", [("hi", "pos"), ("ho", "neg")]),  # classic Mac
        (b"\xef\xbb\xbftext,label\r\nhi,pos\r\n", [("hi", "pos")]),  # BOM, Windows
    ],
)
def test_line_endings_and_bom(tmp_path, content, expected):
    """Before: a lone \\r ended no line, and csv raised 'new-line character seen in unquoted field'."""
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    table = read_text_data(path, ["text"], "label")
    assert list(zip(table.texts, table.labels, strict=True)) == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("quote.csv", b'text,label\n"' + b"x" * 200_000 + b"\n", r"line 2: field larger than field limit"),
        ("utf16.csv", "text,label\nhi,pos\n".encode("utf-16"), r"header row is not valid UTF-8"),
        ("empty.tsv", b"", r"is empty: it needs a header row"),
    ],
)
def test_unreadable_tables_are_one_line_errors(tmp_path, name, content, message):
    """Before: a quote left open (or a 128 KB field) was csv.Error's traceback."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_text_data(path, ["text"], "label")
    _one_line(str(err.value), path)


def test_a_jsonl_row_nested_too_deep_is_a_skip(tmp_path):
    """Before: json's RecursionError, a traceback."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b', "label": "a"}\n{"text": "x", "label": "b"}\n'
    )
    table = read_text_data(path, ["text"], "label")
    assert table.labels == ["b"] and [s.reason for s in table.skipped] == [
        "line 1: not valid JSON (nested too deeply)"
    ]


def test_a_whole_latin_1_file_skips_its_non_ascii_rows_by_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncafé,pos\nplain,neg\nnaïve,pos\n".encode("latin-1"))
    table = read_text_data(path, ["text"], "label")
    assert table.texts == ["plain"]
    assert [s.reason for s in table.skipped] == ["line 2: not valid UTF-8", "line 4: not valid UTF-8"]
