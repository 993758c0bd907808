"""Decode once, to disk: the training images as uint8 at the resolution training needs, in one flat
file under GRAFT_CACHE_DIR, read back per image (FFCV's and DALI's idea, in plain files).

Holding every decoded image in RAM made peak memory grow with the dataset (+227 KB a 500x375
photo at 224 px: 100,000 photos need 26 GB), so fine-tuning could not run on a folder larger than
memory. Here decoding runs once, in parallel worker processes, and streams into
`<key>.u8` (each image's bytes one after another, short side at most `max_side`) with an index
(`<key>.safetensors`: offsets and shapes; no pickle), keyed like the feature cache by the exact
inputs and the size. An image is read back with one `os.pread` into its own buffer: nothing is
memory-mapped, so the resident memory of a process stays flat in the dataset size while the
operating system's page cache keeps what fits (a second epoch and a second run read from there,
or from disk, and never decode again). A cache folder that cannot be written falls back to a
temporary file of the run.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UnreadableImage
from .images import load_rgb
from .pipeline import Source, default_workers, ignore_interrupts

STORE_VERSION = 1


class _Decode(Dataset):
    """(index, HWC uint8 array or None, failure) per source, short side at most `max_side`."""

    def __init__(self, sources: Sequence[Source], max_side: int) -> None:
        self.sources, self.max_side = sources, max_side

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            img = load_rgb(self.sources[i], self.max_side)  # a large JPEG decodes near max_side (draft)
        except UnreadableImage as err:
            return i, None, str(err)
        short = min(img.size)
        if short > self.max_side:
            scale = self.max_side / short
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), 3)
        return i, np.array(img, dtype=np.uint8), None  # a writable copy: torch takes it as it is


def _decoded_in_order(sources: Sequence[Source], max_side: int) -> Iterator[tuple[int, Any, Any]]:
    workers = default_workers() if len(sources) > 64 else 0
    loader = DataLoader(
        _Decode(sources, max_side),
        batch_size=None,
        num_workers=workers,
        worker_init_fn=ignore_interrupts,
        prefetch_factor=8 if workers else None,
    )
    yield from loader  # in index order: the DataLoader keeps the order of its sampler


class DecodedImages:
    """The decoded training images, read back one at a time (`__getitem__`: uint8 CHW tensor).
    Picklable to DataLoader workers: each opens the file for itself."""

    def __init__(self, blob: Path, offsets: np.ndarray, shapes: np.ndarray) -> None:
        self.blob, self.offsets, self.shapes = blob, offsets, shapes
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd, self._pid = os.open(self.blob, os.O_RDONLY), os.getpid()
            weakref.finalize(self, _close, self._fd, self._pid)  # closed with this object
        h, w = (int(v) for v in self.shapes[i])
        image = torch.empty((h, w, 3), dtype=torch.uint8)
        os.preadv(self._fd, [image.numpy()], int(self.offsets[i]))  # straight into the tensor: one copy
        return image.permute(2, 0, 1)

    def __getstate__(self) -> dict[str, Any]:
        return {"blob": self.blob, "offsets": self.offsets, "shapes": self.shapes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["blob"], state["offsets"], state["shapes"])  # type: ignore[misc]

    def subset(self, keep: Sequence[int]) -> DecodedImages:
        keep = np.asarray(keep, dtype=np.int64)
        return DecodedImages(self.blob, self.offsets[keep], self.shapes[keep])

    @property
    def nbytes(self) -> int:
        return int((self.shapes[:, 0] * self.shapes[:, 1] * 3).sum())


def _key(fingerprint: str, max_side: int, n: int) -> str:
    spec = json.dumps({"v": STORE_VERSION, "max_side": max_side, "n": n}, sort_keys=True)
    return f"decoded-{hashlib.sha256(spec.encode()).hexdigest()[:12]}-{fingerprint[:24]}"


def is_stored(n: int, max_side: int, fingerprint: str, folder: Path | None) -> bool:
    """Whether `decode_to_store` would find these sources decoded already (a second run)."""
    where = folder if folder is not None and _writable(folder) else _scratch_folder()
    key = _key(fingerprint, max_side, n)
    return (where / f"{key}.u8").is_file() and (where / f"{key}.safetensors").is_file()


def decode_seconds(sources: Sequence[Source], max_side: int) -> float:
    """Seconds per source of decoding into the store, from a timed sample decoded in this process
    after one warm-up image, divided among the decoding workers."""
    decode = _Decode(sources, max_side)
    if not len(sources):
        return 0.0
    decode[0]
    sample = range(1, min(len(sources), 17)) or range(1)
    started = time.perf_counter()
    for i in sample:
        decode[i]
    return (time.perf_counter() - started) / len(sample) / max(1, default_workers())


def decode_to_store(
    sources: Sequence[Source], max_side: int, fingerprint: str, folder: Path | None
) -> tuple[DecodedImages, dict[int, str]]:
    """Every source decoded once into the store (reused when already there); unreadable ones are
    reported, not fatal, and take no bytes."""
    from safetensors.numpy import load_file, save_file

    from ..bundle import atomic_write

    where = folder if folder is not None and _writable(folder) else _scratch_folder()
    key = _key(fingerprint, max_side, len(sources))
    blob, index = where / f"{key}.u8", where / f"{key}.safetensors"
    if blob.is_file() and index.is_file():
        try:
            saved = load_file(str(index))
            failures = {int(k): v for k, v in json.loads(saved["failures_json"].tobytes()).items()}
            if int(saved["offsets"][-1] + saved["sizes"][-1]) == blob.stat().st_size:
                return DecodedImages(blob, saved["offsets"], saved["shapes"]), failures
        except Exception:  # noqa: BLE001 - a damaged entry is decoded again, never trusted
            pass
    offsets = np.zeros(len(sources), np.int64)
    shapes = np.zeros((len(sources), 2), np.int64)
    failures: dict[int, str] = {}
    tmp = blob.with_name(f".{blob.name}.{os.getpid()}.tmp")
    position = 0
    try:
        with open(tmp, "wb") as out:
            for i, array, failure in _decoded_in_order(sources, max_side):
                offsets[i] = position
                if array is None:
                    failures[int(i)] = failure
                    continue
                array = np.asarray(array)
                shapes[i] = array.shape[:2]
                out.write(array.tobytes())
                position += array.nbytes
        os.replace(tmp, blob)
    finally:
        tmp.unlink(missing_ok=True)
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    record = {
        "offsets": offsets,
        "shapes": shapes,
        "sizes": sizes,
        "failures_json": np.frombuffer(json.dumps(failures).encode(), dtype=np.uint8).copy(),
    }
    if len(sources):
        atomic_write(index, lambda path: save_file(record, str(path)))
    return DecodedImages(blob, offsets, shapes), failures


def _close(fd: int, pid: int) -> None:
    if os.getpid() == pid:
        os.close(fd)


def _scratch_folder() -> Path:
    """A folder of this process's, removed when it exits (the cache folder cannot be written)."""
    folder = Path(tempfile.mkdtemp(prefix="graft-decoded-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


class FixedImages:
    """uint8 CHW images of one shape in an unnamed temporary file (gone when the process is),
    read back a range at a time: an evaluation set, as large as it is, costs one batch of memory."""

    def __init__(self, shape: tuple[int, int, int], folder: Path | None = None) -> None:
        where = folder if folder is not None and _writable(folder) else None
        self.file = tempfile.TemporaryFile(dir=where)  # noqa: SIM115 - lives as long as the set
        self.shape, self.count = shape, 0
        self.item_bytes = int(np.prod(shape))

    def append(self, batch: torch.Tensor) -> None:
        if tuple(batch.shape[1:]) != self.shape:
            raise ValueError(f"images of shape {tuple(batch.shape[1:])}, not {self.shape}")
        self.file.seek(self.count * self.item_bytes)
        self.file.write(batch.contiguous().numpy().tobytes())
        self.count += len(batch)

    def __len__(self) -> int:
        return self.count

    def range(self, start: int, stop: int) -> torch.Tensor:
        stop = min(stop, self.count)
        self.file.flush()
        batch = torch.empty((stop - start, *self.shape), dtype=torch.uint8)
        os.preadv(self.file.fileno(), [batch.numpy()], start * self.item_bytes)
        return batch
