"""From image sources (paths, PIL images, arrays) to normalised batches, the way a backbone wants them.

Workers return uint8 tensors (4x less to move than floats); normalisation happens once per batch.
A file that fails to decode becomes a reported failure, never a crash mid-epoch.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..backbones import Preprocessing
from ..errors import UnreadableImage
from ..runtime.device import host_waits_allowed
from .images import load_rgb, resize_center_crop

Source = str | Path | Image.Image | np.ndarray


def eval_transform(prep: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side to input/crop_pct, center-crop to input size (timm/torchvision eval),
    in Pillow (`resize_center_crop`), as a uint8 CHW tensor."""

    def transform(img: Image.Image) -> torch.Tensor:
        array = resize_center_crop(img, prep.resize_size, prep.input_size, prep.interpolation)
        return torch.from_numpy(np.array(array)).permute(2, 0, 1)

    return transform


_Key = tuple[tuple[float, ...], tuple[float, ...], torch.device]
_CONSTANTS: dict[_Key, tuple[torch.Tensor, torch.Tensor]] = {}  # (mean, std) per backbone and device


def _constants(prep: Preprocessing, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's mean and std (x255) on `device`, built there once (timm's PrefetchLoader): a
    tensor built from Python numbers is a blocking host-to-device copy, once per batch before."""
    key = (tuple(prep.mean), tuple(prep.std), device)
    if key not in _CONSTANTS:
        # normal tensors (usable inside and outside inference mode); a one-off wait for the copy
        with torch.inference_mode(False), host_waits_allowed():
            mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255
            std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255
        _CONSTANTS[key] = (mean, std)
    return _CONSTANTS[key]


def normalize(batch: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 NCHW -> float NCHW (channels_last), scaled and standardised for the backbone."""
    mean, std = _constants(prep, batch.device)
    out = (batch.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)


class SourceDataset(Dataset):
    def __init__(
        self,
        sources: Sequence[Source],
        transform: Callable[[Image.Image], torch.Tensor],
        decode_size: int | None = None,
    ):
        self.sources = sources
        self.transform = transform
        self.decode_size = decode_size  # the short side a JPEG may be decoded down to (draft mode)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return self.transform(load_rgb(self.sources[index], self.decode_size)), index, None
        except UnreadableImage as err:
            return None, index, str(err)


@dataclass
class Batch:
    images: torch.Tensor  # uint8 NCHW, readable items only
    indices: torch.Tensor  # positions of those items in the source list
    failures: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        """What a DataLoader with pin_memory=True calls on a batch type of its own."""
        return Batch(self.images.pin_memory(), self.indices.pin_memory(), self.failures)


def _collate(items: list[tuple[torch.Tensor | None, int, str | None]]) -> Batch:
    ok = [(t, i) for t, i, _ in items if t is not None]
    failures = [(i, err or "") for t, i, err in items if t is None]
    images = torch.stack([t for t, _ in ok]) if ok else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    return Batch(images, torch.tensor([i for _, i in ok], dtype=torch.long), failures)


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which then stops them cleanly: a worker
    that took the terminal's SIGINT itself died mid-transfer and printed a traceback after graft's
    one-line message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interruptible(batches: Iterable[Any]) -> Iterator[Any]:
    """`batches` (a DataLoader) with Ctrl-C held back while the next batch is fetched, and raised
    right after. Landing there, it was lost in an at-fork hook as the workers started (training
    went on) or cut a worker's tensor transfer (a traceback after graft's message). A second
    Ctrl-C while held stops at once. The consumer's own work between batches is interrupted as usual."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # someone else's handler
    ):
        yield from batches
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    iterator: Iterator[Any] | None = None
    while True:
        previous = signal.signal(signal.SIGINT, hold)
        try:
            iterator = iter(batches) if iterator is None else iterator
            item = next(iterator, _END)
        finally:
            signal.signal(signal.SIGINT, previous)
        if held:
            raise KeyboardInterrupt
        if item is _END:
            return
        yield item


_END = object()


MAX_WORKERS = 32  # beyond this, workers' memory costs more than their decoding gains


def default_workers() -> int:
    """Decoding workers: every core but one (left to the model's own threads), none on a single
    core. A GPU's 16 cores decode with 15 (at most 4 before: one busy Python process per 4 images
    in flight could not feed it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_WORKERS, max(0, cores - 1))


def iterate_batches(
    sources: Sequence[Source],
    prep: Preprocessing,
    batch_size: int = 64,
    workers: int | None = None,
    decode_size: int | None = None,
    pin: bool = False,
) -> Iterator[Batch]:
    """Batches of decoded, resized, center-cropped uint8 images. `decode_size` (the resize's short
    side) lets large JPEGs decode at a reduced scale first (`load_rgb`'s `min_side`). `pin` (for a
    CUDA device): in page-locked memory, so that a non-blocking copy to the GPU does not wait."""
    workers = default_workers() if workers is None else workers
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": pin}
    if workers:
        kwargs.update(prefetch_factor=4, persistent_workers=False, worker_init_fn=ignore_interrupts)
    loader = DataLoader(
        SourceDataset(sources, eval_transform(prep), decode_size),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_collate,
        **kwargs,
    )
    yield from interruptible(loader)
