"""Image data: decoding any image to RGB, scanning ImageFolder trees, and the bundled image data
(CIFAR-10, scikit-learn's digits) as arrays; the data sets as splits: `image_sets`.

Everything here reports bad user data as :class:`DataError` with a one-line message that names
the file or folder and says what to do, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .. import _net
from ..errors import DataError, UnreadableImage
from .splits import Labelled, SkippedFile

__all__ = [
    "IMAGE_EXTENSIONS",
    "TEST_NAMES",
    "VAL_NAMES",
    "DataError",
    "SkippedFile",
    "UnreadableImage",
    "load_cifar10",
    "load_digits_images",
    "find_subdir",
    "load_rgb",
    "scan_image_folder",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Folder names recognised next to train/ (matched case-insensitively, first found wins).
_TRAIN_NAMES = ("train",)
VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test",)

# CIFAR-10 file layout, as torchvision.datasets.CIFAR10 expects it; kept here so the "is it
# there?" check needs no torch import.
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_HOST = "www.cs.toronto.edu"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_CIFAR_DEFAULT_ROOT = ".cache/data/cifar10-python"


# --------------------------------------------------------------------------- decoding to RGB

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def load_rgb(
    source: str | Path | Image.Image | np.ndarray | bytes, min_side: int | None = None
) -> Image.Image:
    """Any image -> 8-bit RGB PIL image (EXIF orientation applied, alpha composited on white).

    Paths (and an encoded file's bytes, as Hugging Face `datasets` keep images) are opened and
    fully decoded here, so corrupt or truncated files raise :class:`UnreadableImage`; numpy arrays
    must be uint8, uint16 or float in [0, 1].
    `min_side`: the short side the caller resizes to next. A JPEG much larger than that is decoded
    at a reduced DCT scale (1/2, 1/4 or 1/8; Pillow's `draft`) whose short side is still at least
    `min_side`: a 4000 x 3000 photo for a 256-px resize decodes at 500 x 375, about 30x less work.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _to_rgb(_exif_transpose(source))
    if isinstance(source, str | os.PathLike):
        return _open_rgb(Path(source), min_side)
    if isinstance(source, bytes):
        return _open_rgb(io.BytesIO(source), min_side)
    raise TypeError(f"load_rgb expects a path, PIL image or numpy array, not {type(source).__name__}")


def _open_rgb(path: Path | io.BytesIO, min_side: int | None = None) -> Image.Image:
    try:
        with Image.open(path) as img:
            if min_side and img.format == "JPEG":
                _draft(img, min_side)
            img.load()  # decode everything now: truncation only shows up here
            return _to_rgb(_exif_transpose(img))
    except Exception as err:  # PIL plugins raise many types (OSError, SyntaxError, ...)
        name = path if isinstance(path, Path) else "image bytes"
        raise UnreadableImage(f"{name}: cannot read image ({_short(err)})") from err


def _draft(img: Image.Image, min_side: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale whose short side is still >= min_side."""
    scale = min_side / max(1, min(img.size))
    if scale < 0.5:  # draft only ever halves: nothing to gain above half size
        img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))


_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resize_center_crop(img: Image.Image, resize_size: int, crop_size: int, interpolation: str) -> np.ndarray:
    """timm/torchvision evaluation geometry in Pillow alone: the short side resized to
    `resize_size` (antialiased when shrinking), then a centred `crop_size` square, as uint8 HWC.
    Sizes and crop offsets are computed as torchvision's Resize(int) and CenterCrop do. Training's
    evaluation, feature extraction and every predictor share this one function (and need no torch)."""
    img = resize_short_side(img, resize_size, interpolation)
    size = img.size
    top = int(round((size[1] - crop_size) / 2.0))
    left = int(round((size[0] - crop_size) / 2.0))
    return np.asarray(img.crop((left, top, left + crop_size, top + crop_size)))


def resize_short_side(img: Image.Image, resize_size: int, interpolation: str) -> Image.Image:
    """`resize_center_crop`'s first step: the short side to `resize_size` (torchvision's
    Resize(int) sizes). An image already at that size is returned as it is, so a server can resize
    an upload in its decoding thread and the batch then only crops it, to the same pixels."""
    width, height = img.size
    if width <= height:
        size = (resize_size, int(resize_size * height / width))
    else:
        size = (int(resize_size * width / height), resize_size)
    if size == img.size:
        return img
    return img.resize(size, _PIL_FILTERS.get(interpolation, Image.Resampling.BICUBIC))


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF should not make a decodable image unusable
        return img.copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_scale_integer(np.asarray(img)))
    if mode == "F":
        return _gray_to_rgb(_scale_min_max(np.asarray(img, dtype=np.float64)))
    if mode == "La":
        img, mode = img.convert("LA"), "LA"  # PIL has no direct La -> RGBA path
    if mode in _ALPHA_MODES or mode == "P" or "transparency" in img.info:
        # P covers palettes with transparent entries; L/RGB may carry a tRNS colour.
        return _composite_on_white(img.convert("RGBA"))
    if mode == "RGB":
        return img  # already a private copy: _exif_transpose never returns its input
    try:
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, HSV, LAB, RGBX, ...
    except ValueError as err:
        raise DataError(f"image mode {mode!r} cannot be converted to RGB ({err})") from err


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_integer(values: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit int) pixels -> uint8, using the range the image actually uses."""
    values = values.astype(np.int64)
    high = int(values.max()) if values.size else 0
    if high <= 255:  # a 16-bit container holding 8-bit data: keep the values
        return np.clip(values, 0, 255).astype(np.uint8)
    if high <= 65535:
        return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return _scale_min_max(values.astype(np.float64))  # wider than 16 bits: stretch


def _scale_min_max(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high <= low:  # constant image: no range to stretch
        return np.full(values.shape, np.clip(round(low), 0, 255), dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray), mode="L").convert("RGB")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    pixels = np.ascontiguousarray(_array_to_uint8(array))
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return Image.fromarray(pixels, mode="L").convert("RGB")
    if pixels.shape[2] == 3:
        return Image.fromarray(pixels, mode="RGB")
    return _composite_on_white(Image.fromarray(pixels, mode="RGBA"))


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    ok_shape = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    if not ok_shape or array.size == 0:
        raise DataError(f"image array has shape {array.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise DataError(
                "float image array must hold finite values in [0, 1]; "
                f"got range [{np.nanmin(array):g}, {np.nanmax(array):g}] - scale it first"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    raise DataError(f"image array has dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")


def _short(err: BaseException, limit: int = 160) -> str:
    """One line, bounded length: error messages here must fit on a single line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- folder scanning


def image_files_below(folder: Path) -> list[str]:
    """Every image file below `folder` (hidden ones left out), sorted: `graft predict FOLDER`."""
    return [
        str(p)
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]


def scan_image_folder(
    root: str | Path, classes: Sequence[str] | None = None
) -> tuple[Labelled, tuple[str, ...], list[SkippedFile]]:
    """Scan an ImageFolder tree (``root/<class>/**/*.jpg``): (images, class names, skipped files).

    The images' sources are sorted ``Path``s, their labels int64 indices into the class names;
    unreadable files are skipped with a warning. Without ``classes`` the class names are the
    sorted subfolder names. With ``classes`` (e.g. the train classes when scanning val/test),
    labels follow that order, a class folder outside it is an error, and classes missing here
    are fine.
    """
    root = Path(root)
    _require_dir(root, "image folder")
    class_dirs = _class_dirs(root, classes)
    names = tuple(str(c) for c in classes) if classes is not None else tuple(d.name for d in class_dirs)
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[SkippedFile] = []
    for class_dir in class_dirs:
        good, bad = _scan_class_dir(class_dir)
        skipped.extend(bad)
        if not good:
            raise DataError(_empty_class_message(class_dir, len(bad)))
        paths.extend(good)
        labels.extend([names.index(class_dir.name)] * len(good))
    return Labelled(paths, np.asarray(labels, dtype=np.int64)), names, skipped


_IMAGE_DATA = (
    "images are a folder of class folders, a folder of images with a labels.csv, or a table "
    "(.csv, .tsv, .jsonl, .parquet, .feather) with a column of image paths"
)


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist; check the path")
    if not path.is_dir():
        raise DataError(f"{path}: {what} is not a folder; {_IMAGE_DATA}")


def _visible_subdirs(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _class_dirs(root: Path, classes: Sequence[str] | None) -> list[Path]:
    dirs = _visible_subdirs(root)
    if classes is None:
        if len(dirs) < 2:
            found = ", ".join(d.name for d in dirs) or "none"
            raise DataError(
                f"{root}: found {len(dirs)} class folder(s) ({found}); need at least two, "
                f"laid out as {root}/<class>/*.jpg (one subfolder per class)"
            )
        return dirs
    known = set(classes)
    for d in dirs:
        if d.name not in known:
            raise DataError(
                f"{d}: class {d.name!r} is not one of the training classes "
                f"({', '.join(classes)}); rename or remove the folder"
            )
    if not dirs:
        raise DataError(f"{root}: no class folders; lay it out as {root}/<class>/*.jpg")
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    """Image files below class_dir, recursively, hidden entries ignored, sorted."""
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # symlink loop: do not descend again
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _scan_class_dir(class_dir: Path) -> tuple[list[Path], list[SkippedFile]]:
    good: list[Path] = []
    bad: list[SkippedFile] = []
    for path in _image_files(class_dir):
        reason = _verify_image(path)
        if reason is None:
            good.append(path)
            continue
        warnings.warn(f"skipping unreadable image {path}: {reason}", UserWarning, stacklevel=3)
        bad.append(SkippedFile(str(path), reason))
    return good, bad


def _verify_image(path: Path | bytes) -> str | None:
    """Cheap header/structure check; returns why the file is unreadable, or None if it looks ok."""
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as img:
            img.verify()
    except Exception as err:  # PIL plugins raise many types (OSError, SyntaxError, ...)
        return _short(err)
    return None


def image_source(value: Any) -> Any:
    """A table cell as an image source: a path, PIL image, array or encoded bytes as it is; the
    {"bytes", "path"} record of a Hugging Face `datasets` Image column (or its parquet files) as its
    bytes, else its path; anything else None."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    if isinstance(value, str | os.PathLike | Image.Image | np.ndarray | bytes):
        return value
    return None


def is_image_value(value: Any) -> bool:
    """Whether a table cell holds an image: an image, its bytes, or a path with an image suffix."""
    source = image_source(value)
    if isinstance(source, str | os.PathLike):
        return Path(source).suffix.lower() in IMAGE_EXTENSIONS
    return source is not None


def image_problem(source: Any) -> str | None:
    """Why an in-memory image source cannot be trained on (a missing or unreadable file, bytes that
    do not decode, an array of the wrong shape or type), or None: the checks a folder scan makes."""
    if isinstance(source, Image.Image):
        return None
    if isinstance(source, np.ndarray):
        try:
            _array_to_uint8(source)
        except DataError as err:
            return str(err)
        return None
    if isinstance(source, bytes):
        return _verify_image(source)
    if isinstance(source, str | os.PathLike):
        return _verify_image(Path(source)) if Path(source).is_file() else "no such file"
    return "not an image, image file or path"


def _empty_class_message(class_dir: Path, n_skipped: int) -> str:
    if n_skipped:
        return (
            f"{class_dir}: no readable images ({n_skipped} file(s) skipped as unreadable); "
            "replace them with valid images or remove the folder"
        )
    exts = " ".join(sorted(IMAGE_EXTENSIONS))
    return f"{class_dir}: no image files ({exts}); add images or remove the folder"


def find_subdir(root: Path, names: Sequence[str]) -> Path | None:
    by_name = {d.name.lower(): d for d in _visible_subdirs(root)}
    return next((by_name[n] for n in names if n in by_name), None)


# --------------------------------------------------------------------------- bundled data sets


def load_digits_images() -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...]]:
    """scikit-learn's bundled 8x8 digits as uint8 grayscale images (0..16 -> 0..255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    classes = tuple(str(name) for name in digits.target_names)
    return list(pixels), np.asarray(digits.target, dtype=np.int64), classes


def load_cifar10(
    root: str | Path, train: bool, download: bool = True
) -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...]]:
    """CIFAR-10 (uint8 32x32x3 images, labels, class names) via torchvision.

    Reads the python batches under ``root``, extracts a local ``cifar-10-python.tar.gz``, or
    downloads when allowed and online; otherwise raises a one-line :class:`DataError`.
    """
    root = Path(root).expanduser()
    fetch = False  # whether torchvision has to fetch/extract the archive
    if not _cifar_batches_present(root):
        if (root / _CIFAR_ARCHIVE).is_file():
            _check_cifar_archive(root)
        elif not download:
            raise DataError(_cifar_missing_message(root, "download=False"))
        else:
            _probe_cifar_host(root)  # fail fast offline instead of hanging in urllib
        fetch = True
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=fetch)
    except Exception as err:  # network, archive and integrity failures come in many types
        if fetch:
            raise DataError(_cifar_missing_message(root, _short(err, 100))) from err
        raise DataError(
            f"{root / _CIFAR_FOLDER}: CIFAR-10 files are corrupt or incomplete ({_short(err)}); "
            "delete that folder and run again"
        ) from err
    images = list(np.asarray(ds.data, dtype=np.uint8))
    return images, np.asarray(ds.targets, dtype=np.int64), tuple(ds.classes)


def _cifar_batches_present(root: Path) -> bool:
    folder = root / _CIFAR_FOLDER
    return all((folder / name).is_file() for name in _CIFAR_FILES)


def _check_cifar_archive(root: Path) -> None:
    """A local archive is only extracted when intact: a bad one would trigger a download."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    archive = root / _CIFAR_ARCHIVE
    if not check_integrity(str(archive), CIFAR10.tgz_md5):
        raise DataError(
            f"{archive}: archive is incomplete or corrupt (checksum mismatch); "
            f"download it again from {_CIFAR_URL}"
        )


def _probe_cifar_host(root: Path) -> None:
    """One cheap connection attempt (none at all when offline is forced) before torchvision's
    download, which would otherwise hang or retry."""
    if _net.can_reach(_CIFAR_HOST):
        return
    reason = _offline_reason() if _net.offline_forced() else f"cannot reach {_CIFAR_HOST}"
    raise DataError(_cifar_missing_message(root, reason))


def _offline_reason() -> str:
    """Names the variable that forces offline mode (GRAFT_OFFLINE, HF_HUB_OFFLINE, ...)."""
    forced = [v for v in _net._OFFLINE_VARS if os.environ.get(v, "").strip().lower() in {"1", "true", "yes"}]
    return f"offline: {forced[0] if forced else 'GRAFT_OFFLINE'} is set"


def _cifar_missing_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 is not in {root} and could not be downloaded ({reason}); "
        f"put {_CIFAR_ARCHIVE} ({_CIFAR_URL}) in {root} or point at a folder of images"
    )
