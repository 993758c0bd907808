"""Tests for graft.data.images and graft.data.splits: decoding, folder scanning, the one data model,
stratified splits, image data sets (folders, CIFAR-10, digits) and the package's public names."""

from __future__ import annotations

import importlib
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft._net
import graft.data as gdata
from graft.data import (
    IMAGE_EXTENSIONS,
    DataError,
    DataSplits,
    Labelled,
    SkippedFile,
    UnreadableImage,
    image_sets,
    load_cifar10,
    load_digits_images,
    load_image_data,
    load_rgb,
    scan_image_folder,
    stratified_split,
    stratified_subset,
)
from graft.data import images as images_module
from graft.errors import GraftError

# ----------------------------------------------------------------------------- helpers


def _save(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _make_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """ImageFolder tree root/<class>/<i><ext> with counts[class] small images."""
    for ci, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _save(root / name / f"{i:03d}{ext}", color=(ci * 40, i % 256, 100))
    return root


def _valid_jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 6) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


# ----------------------------------------------------------------------------- load_rgb


def test_extensions_are_lower_case_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".pgm", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


def test_load_rgb_grayscale_and_one_bit(tmp_path: Path) -> None:
    gray = Image.new("L", (3, 2), 77)
    out = load_rgb(gray)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert out.getpixel((1, 1)) == (77, 77, 77)

    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    bits.save(tmp_path / "bits.png")
    out = load_rgb(tmp_path / "bits.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_load_rgb_palette_with_transparency_goes_white(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255])
    pal.putpixel((0, 0), 0)  # red entry, marked transparent below
    pal.putpixel((1, 0), 1)  # opaque blue
    pal.save(tmp_path / "pal.png", transparency=0)
    out = load_rgb(str(tmp_path / "pal.png"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)


def test_load_rgb_rgba_and_la_composite_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    out = load_rgb(rgba)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (10, 20, 30)

    half = load_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 128)))
    assert _close(half.getpixel((0, 0)), (127, 127, 127), tol=2)

    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (40, 255))
    out = load_rgb(la)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (40, 40, 40)
    assert rgba.mode == "RGBA"  # the input is left alone


def test_load_rgb_sixteen_bit_png_scaled_by_range(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = load_rgb(tmp_path / "deep.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (4, 4, 4)  # 1000 / 257 rounded
    assert out.getpixel((2, 0)) == (255, 255, 255)

    # 8-bit data stored in a 16-bit container keeps its values
    Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint16)).save(tmp_path / "low.png")
    assert load_rgb(tmp_path / "low.png").getpixel((1, 0)) == (100, 100, 100)


def test_load_rgb_float_image_min_max() -> None:
    img = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32), mode="F")
    out = load_rgb(img)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (64, 64, 64)
    assert out.getpixel((2, 0)) == (255, 255, 255)


def test_load_rgb_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = load_rgb(tmp_path / "cmyk.jpg")
    assert out.mode == "RGB"
    assert _close(out.getpixel((8, 8)), (255, 0, 0))


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    out = load_rgb(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    assert _close(out.getpixel((10, 5)), (255, 0, 0))  # old left half is now on top
    assert _close(out.getpixel((10, 35)), (0, 0, 255))


def test_load_rgb_numpy_arrays() -> None:
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    out = load_rgb(gray)
    assert out.mode == "RGB" and out.size == (2, 2)
    assert out.getpixel((1, 0)) == (128, 128, 128)

    assert load_rgb(gray[:, :, None]).getpixel((0, 1)) == (255, 255, 255)

    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[1, 2] = (1, 2, 3)
    out = load_rgb(rgb)
    assert out.size == (3, 2) and out.getpixel((2, 1)) == (1, 2, 3)

    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 1] = (9, 8, 7, 255)
    out = load_rgb(rgba)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert out.getpixel((1, 0)) == (9, 8, 7)

    deep = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = load_rgb(deep)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]

    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert [load_rgb(floats).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 2), dtype=np.int64),
        np.zeros((2, 2, 2), dtype=np.uint8),
        np.zeros((2, 2, 3, 1), dtype=np.uint8),
        np.full((2, 2), 2.0),
        np.zeros((0, 4), dtype=np.uint8),
    ],
)
def test_load_rgb_rejects_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(DataError) as info:
        load_rgb(bad)
    assert "\n" not in str(info.value)


def test_load_rgb_truncated_and_missing_files(tmp_path: Path) -> None:
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(_valid_jpeg_bytes()[:100])
    with pytest.raises(UnreadableImage, match="trunc.jpg: cannot read image"):
        load_rgb(trunc)
    with pytest.raises(UnreadableImage, match="nothere.png"):
        load_rgb(tmp_path / "nothere.png")
    assert issubclass(UnreadableImage, DataError) and issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- scanning


def test_scan_sorted_recursive_and_ignores_hidden_and_other_files(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"dog": 2, "cat": 3})
    _save(root / "cat" / "nested" / "deep.JPG")
    _save(root / "cat" / ".hidden.png")
    _save(root / ".secret" / "x.png")  # hidden folder is not a class
    (root / "cat" / "notes.txt").write_text("not an image")
    samples, classes, skipped = scan_image_folder(root)
    assert isinstance(samples, Labelled)
    assert classes == ("cat", "dog")
    assert len(samples) == 6 and skipped == []
    assert samples.labels.dtype == np.int64
    assert samples.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert all(isinstance(p, Path) for p in samples.sources)
    assert list(samples.sources) == sorted(samples.sources)
    assert root / "cat" / "nested" / "deep.JPG" in samples.sources
    assert all(not p.name.startswith(".") for p in samples.sources)


def test_scan_skips_corrupt_files_with_warnings(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "text.png").write_text("hello, I am not a PNG")
    (root / "b" / "trunc.jpg").write_bytes(_valid_jpeg_bytes()[:100])
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        samples, _, skipped = scan_image_folder(root)
    messages = " ".join(str(w.message) for w in record)
    for name in ("empty.jpg", "text.png", "trunc.jpg"):
        assert name in messages
    assert all(isinstance(s, SkippedFile) for s in skipped)
    assert {Path(s.path).name for s in skipped} == {"empty.jpg", "text.png", "trunc.jpg"}
    assert all(s.reason for s in skipped)
    assert len(samples) == 4
    assert not any(p.name in {"empty.jpg", "text.png", "trunc.jpg"} for p in samples.sources)


def test_scan_class_with_only_corrupt_files_names_folder(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 2})
    (root / "broken").mkdir()
    (root / "broken" / "x.jpg").write_bytes(b"")
    (root / "broken" / "y.png").write_text("nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"broken: no readable images \(2 file"):
            scan_image_folder(root)


def test_scan_empty_class_folder(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 2})
    (root / "nothing").mkdir()
    with pytest.raises(DataError, match="nothing: no image files"):
        scan_image_folder(root)


def test_scan_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_image_folder(tmp_path / "missing")
    one = _make_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(DataError, match=r"need at least two.*<class>/\*\.jpg") as info:
        scan_image_folder(one)
    assert "\n" not in str(info.value)
    flat = tmp_path / "flat"
    _save(flat / "a.png")
    with pytest.raises(DataError, match="found 0 class folder"):
        scan_image_folder(flat)
    with pytest.raises(DataError, match="not a folder; .* or a table .* with a column of image paths"):
        scan_image_folder(flat / "a.png")


def test_scan_with_given_classes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "val", {"dog": 2})
    samples, classes, _ = scan_image_folder(root, classes=["cat", "dog", "emu"])
    assert classes == ("cat", "dog", "emu")
    assert samples.labels.tolist() == [1, 1]
    _make_folder(root, {"yak": 1})
    with pytest.raises(DataError, match="yak"):
        scan_image_folder(root, classes=["cat", "dog"])


# ----------------------------------------------------------------------------- Labelled


def test_labelled_subset_keeps_order_and_accepts_masks() -> None:
    samples = Labelled([Path("a.png"), Path("b.png"), Path("c.png")], np.array([0, 1, 1]))
    sub = samples.subset([2, 0])
    assert list(sub.sources) == [Path("c.png"), Path("a.png")]
    assert sub.labels.tolist() == [1, 0]
    assert len(samples.subset(np.array([], dtype=np.int64))) == 0
    masked = samples.subset(np.array([True, False, True]))  # a mask, not the indices 1, 0, 1
    assert list(masked.sources) == [Path("a.png"), Path("c.png")]
    assert masked.labels.tolist() == [0, 1]
    arrays = Labelled([np.full((2, 2), i, dtype=np.uint8) for i in range(3)], [0, 1, 0])
    assert isinstance(arrays.labels, np.ndarray)
    assert int(arrays.subset([1]).sources[0][0, 0]) == 1
    with pytest.raises(ValueError, match="one label per source"):
        Labelled([Path("a.png")], np.array([0, 1]))


def test_stratified_subset() -> None:
    labels = np.repeat(np.arange(3), 10)
    idx = stratified_subset(labels, per_class=4, seed=1)
    assert idx.dtype == np.int64 and len(idx) == 12
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [4, 4, 4]
    assert np.array_equal(idx, stratified_subset(labels, per_class=4, seed=1))

    again = stratified_subset(labels, per_class=4, seed=2, exclude=idx)
    assert not set(again) & set(idx)
    assert np.bincount(labels[again]).tolist() == [4, 4, 4]
    with pytest.raises(DataError, match="class"):
        stratified_subset(labels, per_class=7, seed=0, exclude=np.concatenate([idx, again]))


# ----------------------------------------------------------------------------- stratified_split


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat([0, 1, 2], [30, 60, 10])
    np.random.default_rng(0).shuffle(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stratifiable data must not fall back
        train_idx, val_idx = stratified_split(labels, 0.2, seed=7)
    assert len(val_idx) == 20 and len(train_idx) == 80
    assert np.bincount(labels[val_idx], minlength=3).tolist() == [6, 12, 2]
    assert np.bincount(labels[train_idx], minlength=3).tolist() == [24, 48, 8]
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)  # sorted, no repeats
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(100))


def test_stratified_split_is_seeded() -> None:
    labels = np.repeat([0, 1], 50)
    first = stratified_split(labels, 0.3, seed=1)
    again = stratified_split(labels, 0.3, seed=1)
    other = stratified_split(labels, 0.3, seed=2)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match=r"--val-fraction must be between 0 and 1") as info:
        stratified_split(np.repeat([0, 1], 10), fraction, seed=0)
    assert isinstance(info.value, GraftError) and "\n" not in str(info.value)


def test_stratified_split_refuses_a_single_example_class_naming_it() -> None:
    labels = np.array([0] + [1] * 9)
    with pytest.raises(DataError, match=r"my-data: class 'cat' has a single example.*--val") as info:
        stratified_split(labels, 0.3, seed=0, where="my-data", classes=("cat", "dog"))
    assert "\n" not in str(info.value)


def test_stratified_split_falls_back_with_a_warning_naming_the_data() -> None:
    """Fewer validation places than classes: a plain random split, with a warning."""
    labels = np.repeat(np.arange(5), 2)
    with pytest.warns(UserWarning, match=r"my-data: a 0.2 validation split of 10 examples has 2 place"):
        train_idx, val_idx = stratified_split(labels, 0.2, seed=0, where="my-data")
    assert len(val_idx) == 2 and len(train_idx) == 8
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(10))


def test_stratified_split_too_few_examples() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"tiny: 1 examples are too few"):
            stratified_split(np.array([0]), 0.5, seed=0, where="tiny")


# ----------------------------------------------------------------------------- load_image_data


def test_load_image_data_plain_folder_stratified_and_deterministic(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 10, "b": 20})
    splits = load_image_data(root, val_fraction=0.2, seed=3)
    assert isinstance(splits, DataSplits)
    assert splits.classes == ("a", "b") and splits.name == "d"
    assert splits.val_source == "split:0.2"
    assert splits.test is None and splits.skipped == []
    assert len(splits.val) == 6 and len(splits.train) == 24
    assert np.bincount(splits.val.labels).tolist() == [2, 4]  # stratified
    assert splits.train.labels.dtype == np.int64
    train, val = set(splits.train.sources), set(splits.val.sources)
    assert not train & val
    assert train | val == set(scan_image_folder(root)[0].sources)

    same = load_image_data(str(root), None, None, 0.2, 3)  # positional, str path
    assert list(same.val.sources) == list(splits.val.sources)
    other = load_image_data(root, val_fraction=0.2, seed=4)
    assert list(other.val.sources) != list(splits.val.sources)


def test_load_image_data_single_example_class_is_one_line_naming_it(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 1, "b": 9})
    with pytest.raises(DataError, match=f"{re.escape(str(root))}: class 'a' has a single example"):
        load_image_data(root, val_fraction=0.3)
    _make_folder(tmp_path / "v", {"a": 1, "b": 1})  # a validation folder: nothing to split off
    splits = load_image_data(root, val=tmp_path / "v", val_fraction=0.3)
    assert len(splits.train) == 10 and len(splits.val) == 2


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_load_image_data_rejects_bad_fraction(tmp_path: Path, fraction: float) -> None:
    root = _make_folder(tmp_path / "d", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="--val-fraction"):
        load_image_data(root, val_fraction=fraction)
    # checked up front, even when a validation folder makes the fraction unused
    _make_folder(tmp_path / "v", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="--val-fraction"):
        load_image_data(root, val=tmp_path / "v", val_fraction=fraction)


def test_load_image_data_train_valid_test_layout(tmp_path: Path) -> None:
    data = tmp_path / "task"
    _make_folder(data / "train", {"a": 3, "b": 3})
    _make_folder(data / "valid", {"a": 1, "b": 2})
    _make_folder(data / "test", {"b": 2})
    (data / "valid" / "b" / "bad.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="bad.jpg"):
        splits = load_image_data(data)
    assert splits.val_source == "folder" and splits.name == "task"
    assert len(splits.train) == 6 and len(splits.val) == 3
    assert splits.classes == ("a", "b")
    assert splits.val.labels.tolist() == [0, 1, 1]
    assert splits.test is not None and splits.test.labels.tolist() == [1, 1]
    assert all(data / "test" in p.parents for p in splits.test.sources)
    assert [Path(s.path).name for s in splits.skipped] == ["bad.jpg"]


def test_load_image_data_train_only_layout_and_explicit_val_wins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _make_folder(data / "train", {"a": 5, "b": 5})
    _make_folder(data / "val", {"a": 2, "b": 2})
    elsewhere = _make_folder(tmp_path / "other_val", {"a": 1, "b": 1})
    splits = load_image_data(data, val=elsewhere)
    assert splits.val_source == "folder" and len(splits.val) == 2
    assert all(elsewhere in p.parents for p in splits.val.sources)

    (data / "val").rename(data / "unused")
    splits = load_image_data(data, val_fraction=0.2)
    assert splits.val_source == "split:0.2" and len(splits.val) == 2
    assert np.bincount(splits.val.labels).tolist() == [1, 1]
    assert all(data / "train" in p.parents for p in [*splits.train.sources, *splits.val.sources])


def test_load_image_data_val_with_unknown_class(tmp_path: Path) -> None:
    _make_folder(tmp_path / "train", {"a": 2, "b": 2})
    _make_folder(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        load_image_data(tmp_path)


def _fake_cifar(monkeypatch: pytest.MonkeyPatch, train_counts: list[int]) -> list[tuple[Path, bool]]:
    """Replace load_cifar10 by an in-memory set; returns the (root, train) of each call."""
    calls: list[tuple[Path, bool]] = []
    classes = tuple(f"c{i}" for i in range(len(train_counts)))

    def fake(root: str | Path, train: bool, download: bool = True):
        calls.append((Path(root), train))
        counts = train_counts if train else [2] * len(train_counts)
        labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
        images = [np.full((32, 32, 3), i % 256, dtype=np.uint8) for i in range(len(labels))]
        return images, labels, classes

    monkeypatch.setattr(image_sets, "load_cifar10", fake)  # what load_image_data("cifar10") reads
    return calls


def test_load_image_data_cifar10_is_split_stratified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_cifar(monkeypatch, [8, 12, 20])
    splits = load_image_data("cifar10", val_fraction=0.25, seed=0, data_root=str(tmp_path / "c"))
    assert sorted(calls) == [(tmp_path / "c", False), (tmp_path / "c", True)]
    assert splits.name == "cifar10" and splits.val_source == "split:0.25"
    assert splits.classes == ("c0", "c1", "c2")
    assert np.bincount(splits.val.labels).tolist() == [2, 3, 5]  # stratified
    assert len(splits.train) == 30 and len(splits.val) == 10
    train_values = {int(img[0, 0, 0]) for img in splits.train.sources}
    assert not train_values & {int(img[0, 0, 0]) for img in splits.val.sources}
    assert splits.test is not None and splits.test.labels.tolist() == [0, 0, 1, 1, 2, 2]

    calls.clear()
    again = load_image_data("cifar10", val_fraction=0.25, seed=0)
    assert {root for root, _ in calls} == {Path(".cache/data/cifar10-python")}  # the default root
    assert again.val.labels.tolist() == splits.val.labels.tolist()


def test_load_image_data_cifar10_tiny_class_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cifar(monkeypatch, [1, 9])
    with pytest.raises(DataError, match="cifar10: class 'c0' has a single example"):
        load_image_data("cifar10", val_fraction=0.3, seed=0)


# ----------------------------------------------------------------------------- bundled sets


def test_load_digits_images() -> None:
    images, labels, classes = load_digits_images()
    assert len(images) == len(labels) == 1797
    assert images[0].shape == (8, 8) and images[0].dtype == np.uint8
    assert labels.dtype == np.int64
    assert classes == tuple(str(i) for i in range(10))
    assert max(int(im.max()) for im in images) == 255
    assert min(int(im.min()) for im in images) == 0
    assert load_rgb(images[0]).size == (8, 8)


def _connection_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """socket.create_connection replaced by a spy that records the address and fails."""
    calls: list[tuple] = []

    def no_network(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        calls.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    return calls


def test_load_cifar10_offline_never_touches_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")  # conftest sets it too; the test depends on it
    calls = _connection_spy(monkeypatch)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "cifar", train=True)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"CIFAR-10 is not in {tmp_path / 'cifar'} and could not be downloaded")
    assert "(offline: GRAFT_OFFLINE is set)" in message and "cifar-10-python.tar.gz" in message
    assert calls == []  # no connection attempted at all

    with pytest.raises(DataError, match="could not be downloaded"):
        load_cifar10(tmp_path / "cifar", train=False, download=False)
    assert calls == []  # download=False never probes the network


def test_load_cifar10_offline_names_the_variable_that_forced_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRAFT_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = _connection_spy(monkeypatch)
    with pytest.raises(DataError, match=r"\(offline: HF_HUB_OFFLINE is set\)"):
        load_cifar10(tmp_path / "cifar", train=True)
    assert calls == []


def test_load_cifar10_unreachable_host_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GRAFT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = _connection_spy(monkeypatch)
    graft._net._probe.cache_clear()  # a cached answer from elsewhere would skip the probe
    try:
        with pytest.raises(DataError) as info:
            load_cifar10(tmp_path / "cifar", train=True)
    finally:
        graft._net._probe.cache_clear()  # do not leave the faked "unreachable" for other tests
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"CIFAR-10 is not in {tmp_path / 'cifar'} and could not be downloaded")
    assert "(cannot reach www.cs.toronto.edu)" in message
    assert len(calls) == 1 and calls[0] == ("www.cs.toronto.edu", 443)


# ----------------------------------------------------------------------------- the package


def test_public_names_reexported() -> None:
    expected = {
        "Labelled",
        "DataSplits",
        "SkippedFile",
        "stratified_split",
        "load_image_data",
        "load_text_data",
        "scan_image_folder",
        "stratified_subset",
        "load_digits_images",
        "load_cifar10",
        "load_rgb",
        "IMAGE_EXTENSIONS",
        "DataError",
        "UnreadableImage",
    }
    assert expected <= set(gdata.__all__)
    assert all(hasattr(gdata, name) for name in gdata.__all__)
    for gone in ("ImageSamples", "ArraySamples", "ImageSplits", "load_image_splits", "split_arrays"):
        assert not hasattr(gdata, gone) and not hasattr(images_module, gone)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("graft.data.sources")


def test_one_definition_of_each_error_and_record() -> None:
    import graft.data.splits as splits_module
    import graft.data.text as text_module
    import graft.errors as errors

    assert gdata.DataError is images_module.DataError is text_module.DataError is errors.DataError
    assert gdata.UnreadableImage is images_module.UnreadableImage is errors.UnreadableImage
    assert gdata.SkippedFile is images_module.SkippedFile is splits_module.SkippedFile
    assert issubclass(UnreadableImage, DataError) and issubclass(DataError, GraftError)


def test_importing_graft_data_does_not_import_torch() -> None:
    code = "import sys, graft.data; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
