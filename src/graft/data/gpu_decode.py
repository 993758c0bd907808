"""Decoding JPEG files on a CUDA GPU (nvJPEG, through `torchvision.io.decode_jpeg(device="cuda")`)
in place of the CPU decode workers, when a race at the start of an extraction says it is faster on
this machine, as `runtime.engine` races the CPU engines:

- without CUDA there is no race: "cpu (no CUDA)";
- only JPEG files race (their first PROBE_IMAGES must all be JPEGs by name and content);
- both decoders read, decode, resize and crop the same first PROBE_IMAGES files (the GPU's first
  call, which sets nvJPEG up, is not timed); the CPU rate is one process's times the workers that
  would run; the GPU is kept when it is at least MIN_SPEEDUP faster;
- a GPU decoder that fails in the race is not used; a batch that fails on it later (a corrupt or
  unusual file) is decoded by the CPU path, which names and skips the bad file as ever.

`DecodeChoice` is what report.json records (`features_engine.decoder`). The GPU's resize is
torchvision's antialiased one, not Pillow's: pixels may differ by a level or two.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbones import Preprocessing
from ..runtime.device import synchronize
from .images import load_rgb
from .pipeline import Batch, default_workers, eval_transform, iterate_batches

PROBE_IMAGES = 32
MIN_SPEEDUP = 1.1
JPEG_START = b"\xff\xd8\xff"

_RACED: dict[tuple, tuple[Any, DecodeChoice]] = {}  # decoded_batches' races, per device and size

# encoded files (1-D uint8 tensors) -> RGB uint8 CHW images on the device
Decoder = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclass
class DecodeChoice:
    name: str  # "gpu" or "cpu"
    reason: str
    gpu_images_per_second: float | None = None
    cpu_images_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NO_CUDA = DecodeChoice("cpu", "cpu (no CUDA)")


def nvjpeg(device: torch.device) -> Decoder:
    """torchvision's batched nvJPEG decoder, EXIF orientation applied as the CPU path does."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(files: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():  # deprecated since torchvision 0.29 for TorchCodec, not gone
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            return decode_jpeg(files, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)

    return decode


def is_jpeg_file(source: Any) -> bool:
    if not isinstance(source, str | Path) or Path(source).suffix.lower() not in (".jpg", ".jpeg"):
        return False
    try:
        with open(source, "rb") as f:
            return f.read(3) == JPEG_START
    except OSError:
        return False


def gpu_batch(sources: Sequence[Any], prep: Preprocessing, decoder: Decoder) -> torch.Tensor:
    """uint8 NCHW on the device: files read here, decoded, resized and cropped on the GPU."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    files = [torch.frombuffer(bytearray(Path(s).read_bytes()), dtype=torch.uint8) for s in sources]
    mode = InterpolationMode(prep.interpolation) if prep.interpolation else InterpolationMode.BILINEAR
    images = [
        tvf.center_crop(tvf.resize(image, prep.resize_size, mode, antialias=True), prep.input_size)
        for image in decoder(files)
    ]
    return torch.stack(images)


def gpu_batches(
    sources: Sequence[Any], prep: Preprocessing, batch_size: int, decoder: Decoder
) -> Iterator[Batch]:
    """`iterate_batches`'s batches decoded on the GPU; a batch the GPU cannot decode goes through
    the CPU path, which reports its unreadable files."""
    for start in range(0, len(sources), batch_size):
        part = list(sources[start : start + batch_size])
        try:
            yield Batch(gpu_batch(part, prep, decoder), torch.arange(start, start + len(part)), [])
        except Exception:  # noqa: BLE001 - any decoder error: the CPU path decides what is unreadable
            for batch in iterate_batches(part, prep, len(part), workers=0, decode_size=prep.resize_size):
                failures = [(start + i, reason) for i, reason in batch.failures]
                yield Batch(batch.images, batch.indices + start, failures)


def _rate(run: Callable[[], Any], count: int, device: torch.device) -> float:
    started = time.perf_counter()
    run()
    synchronize(device)
    return count / max(time.perf_counter() - started, 1e-9)


def choose_decoder(
    sources: Sequence[Any],
    prep: Preprocessing,
    device: torch.device,
    workers: int,
    gpu: Decoder | None = None,
) -> tuple[Decoder | None, DecodeChoice]:
    """The race (see the module's docstring): the GPU decoder to use, or None for the CPU workers."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, NO_CUDA
    sample = list(sources[:PROBE_IMAGES])
    if not sample or not all(is_jpeg_file(s) for s in sample):
        return None, DecodeChoice("cpu", "cpu (not JPEG files)")
    decoder = gpu or nvjpeg(device)
    try:
        gpu_batch(sample[:2], prep, decoder)  # nvJPEG's set-up, not timed
        gpu_rate = _rate(lambda: gpu_batch(sample, prep, decoder), len(sample), device)
    except Exception as err:  # noqa: BLE001 - a decoder that fails is not used, whatever the error
        return None, DecodeChoice("cpu", f"cpu (the GPU decoder failed: {type(err).__name__}: {err})"[:200])
    transform = eval_transform(prep)
    one = _rate(lambda: [transform(load_rgb(s, prep.resize_size)) for s in sample], len(sample), device)
    cpu_rate = one * max(1, workers)
    rates = {"gpu_images_per_second": round(gpu_rate, 1), "cpu_images_per_second": round(cpu_rate, 1)}
    if gpu_rate >= MIN_SPEEDUP * cpu_rate:
        reason = f"gpu ({gpu_rate:.0f} vs {cpu_rate:.0f} images/s on the CPU)"
        return decoder, DecodeChoice("gpu", reason, **rates)
    return None, DecodeChoice("cpu", f"cpu ({cpu_rate:.0f} vs {gpu_rate:.0f} images/s on the GPU)", **rates)


def decoded_batches(
    sources: Sequence[Any], prep: Preprocessing, batch_size: int, device: torch.device, pin: bool = False
) -> tuple[Iterator[Batch], DecodeChoice]:
    """An extraction's batches of uint8 images, decoded where the race says (the one door to the
    GPU path), and the choice. The race runs once per process, device and image size: the parts
    of one extraction (a time budget's chunks) and later ones reuse it."""
    if device.type != "cuda":
        return iterate_batches(sources, prep, batch_size, decode_size=prep.resize_size, pin=pin), NO_CUDA
    jpegs = all(is_jpeg_file(s) for s in sources[:PROBE_IMAGES])
    key = (device, prep.resize_size, prep.input_size, prep.interpolation, jpegs)
    if key not in _RACED:
        _RACED[key] = choose_decoder(sources, prep, device, default_workers())
    decoder, choice = _RACED[key]
    if decoder is not None:
        return gpu_batches(sources, prep, batch_size, decoder), choice
    return iterate_batches(sources, prep, batch_size, decode_size=prep.resize_size, pin=pin), choice
