"""Tests for graft.data.images: decoding, folder scanning, splits and bundled data sets."""

from __future__ import annotations

import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft.data as gdata
from graft.data import (
    IMAGE_EXTENSIONS,
    ArraySamples,
    DataError,
    ImageSamples,
    UnreadableImage,
    load_cifar10,
    load_digits_images,
    load_image_splits,
    load_rgb,
    scan_image_folder,
    stratified_subset,
)

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
    samples, skipped = scan_image_folder(root)
    assert samples.classes == ("cat", "dog")
    assert len(samples) == 6 and skipped == []
    assert samples.labels.dtype == np.int64
    assert samples.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert list(samples.paths) == sorted(samples.paths)
    assert root / "cat" / "nested" / "deep.JPG" in samples.paths
    assert all(not p.name.startswith(".") for p in samples.paths)


def test_scan_skips_corrupt_files_with_warnings(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "text.png").write_text("hello, I am not a PNG")
    (root / "b" / "trunc.jpg").write_bytes(_valid_jpeg_bytes()[:100])
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        samples, skipped = scan_image_folder(root)
    messages = " ".join(str(w.message) for w in record)
    for name in ("empty.jpg", "text.png", "trunc.jpg"):
        assert name in messages
    assert {Path(s.path).name for s in skipped} == {"empty.jpg", "text.png", "trunc.jpg"}
    assert all(s.reason for s in skipped)
    assert len(samples) == 4
    assert not any(p.name in {"empty.jpg", "text.png", "trunc.jpg"} for p in samples.paths)


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
    with pytest.raises(DataError, match="not a directory"):
        scan_image_folder(flat / "a.png")


def test_scan_with_given_classes(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "val", {"dog": 2})
    samples, _ = scan_image_folder(root, classes=["cat", "dog", "emu"])
    assert samples.classes == ("cat", "dog", "emu")
    assert samples.labels.tolist() == [1, 1]
    _make_folder(root, {"yak": 1})
    with pytest.raises(DataError, match="yak"):
        scan_image_folder(root, classes=["cat", "dog"])


# ----------------------------------------------------------------------------- samples


def test_image_samples_subset() -> None:
    samples = ImageSamples((Path("a.png"), Path("b.png"), Path("c.png")), np.array([0, 1, 1]), ("x", "y"))
    sub = samples.subset([2, 0])
    assert sub.paths == (Path("c.png"), Path("a.png"))
    assert sub.labels.tolist() == [1, 0] and sub.classes == ("x", "y")
    assert len(samples.subset(np.array([], dtype=np.int64))) == 0
    assert len(samples.subset(np.array([True, False, True]))) == 2
    with pytest.raises(ValueError):
        ImageSamples((Path("a.png"),), np.array([0, 1]), ("x", "y"))


def test_array_samples() -> None:
    images = tuple(np.full((4, 4), i, dtype=np.uint8) for i in range(4))
    samples = ArraySamples(images, np.array([0, 1, 0, 1]), ("a", "b"))
    assert len(samples) == 4
    sub = samples.subset(np.array([3, 1]))
    assert len(sub) == 2 and int(sub.images[0][0, 0]) == 3
    assert sub.labels.tolist() == [1, 1]
    with pytest.raises(DataError):
        ArraySamples((np.zeros((4, 4), dtype=np.float32),), np.array([0]), ("a",))


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


# ----------------------------------------------------------------------------- splits


def test_splits_plain_folder_stratified_and_deterministic(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 10, "b": 20})
    splits = load_image_splits(root, val_fraction=0.2, seed=3)
    assert splits.val_source == "split:0.2"
    assert splits.test is None and splits.skipped == ()
    assert len(splits.val) == 6 and len(splits.train) == 24
    assert np.bincount(splits.val.labels).tolist() == [2, 4]  # stratified
    train, val = set(splits.train.paths), set(splits.val.paths)
    assert not train & val
    assert train | val == set(scan_image_folder(root)[0].paths)

    same = load_image_splits(root, val_fraction=0.2, seed=3)
    assert same.val.paths == splits.val.paths
    other = load_image_splits(root, val_fraction=0.2, seed=4)
    assert other.val.paths != splits.val.paths


def test_splits_tiny_class_falls_back_to_plain_split(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "d", {"a": 1, "b": 9})
    with pytest.warns(UserWarning, match="cannot stratify"):
        splits = load_image_splits(root, val_fraction=0.3)
    assert len(splits.train) + len(splits.val) == 10 and len(splits.val) == 3


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_splits_reject_bad_fraction(tmp_path: Path, fraction: float) -> None:
    root = _make_folder(tmp_path / "d", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="val_fraction"):
        load_image_splits(root, val_fraction=fraction)


def test_splits_train_valid_test_layout(tmp_path: Path) -> None:
    _make_folder(tmp_path / "train", {"a": 3, "b": 3})
    _make_folder(tmp_path / "valid", {"a": 1, "b": 2})
    _make_folder(tmp_path / "test", {"b": 2})
    (tmp_path / "valid" / "b" / "bad.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="bad.jpg"):
        splits = load_image_splits(tmp_path)
    assert splits.val_source == "folder"
    assert len(splits.train) == 6 and len(splits.val) == 3
    assert splits.train.classes == splits.val.classes == ("a", "b")
    assert splits.test is not None and splits.test.labels.tolist() == [1, 1]
    assert [Path(s.path).name for s in splits.skipped] == ["bad.jpg"]


def test_splits_train_only_layout_and_explicit_val_wins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _make_folder(data / "train", {"a": 5, "b": 5})
    _make_folder(data / "val", {"a": 2, "b": 2})
    elsewhere = _make_folder(tmp_path / "other_val", {"a": 1, "b": 1})
    splits = load_image_splits(data, val=elsewhere)
    assert splits.val_source == "folder" and len(splits.val) == 2
    assert all(elsewhere in p.parents for p in splits.val.paths)

    (data / "val").rename(data / "unused")
    splits = load_image_splits(data, val_fraction=0.2)
    assert splits.val_source.startswith("split:") and len(splits.val) == 2
    assert all(data / "train" in p.parents for p in splits.train.paths + splits.val.paths)


def test_splits_val_with_unknown_class(tmp_path: Path) -> None:
    _make_folder(tmp_path / "train", {"a": 2, "b": 2})
    _make_folder(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        load_image_splits(tmp_path)


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


def test_load_cifar10_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    def no_network(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        calls.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "cifar", train=True)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"CIFAR-10 is not in {tmp_path / 'cifar'} and could not be")
    assert "network is unreachable" in message and "cifar-10-python.tar.gz" in message
    assert calls and calls[0][0] == "www.cs.toronto.edu"

    calls.clear()
    with pytest.raises(DataError, match="could not be downloaded"):
        load_cifar10(tmp_path / "cifar", train=False, download=False)
    assert calls == []  # download=False never probes the network


def test_public_names_reexported() -> None:
    for name in ("load_rgb", "ImageSplits", "SkippedFile", "load_cifar10", "ArraySamples"):
        assert hasattr(gdata, name)
