"""The GPU JPEG-decode race, on the CPU: a fake device decoder that is faster, slower or fails, the
CPU fallback for a batch the device cannot decode, and no race without CUDA."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_image
from PIL import Image

from graft.backbones import Preprocessing
from graft.data import gpu_decode
from graft.data.gpu_decode import choose_decoder, decoded_batches, gpu_batches, nvjpeg
from graft.data.pipeline import iterate_batches

pytest.importorskip("torchvision")

PREP = Preprocessing(input_size=24)  # resize to 24/crop_pct, crop 24
CUDA = torch.device("cuda")


def _jpegs(root: Path, n: int, ext: str = "jpg") -> list[Path]:
    rng = np.random.default_rng(0)
    paths = [root / f"{k:02d}.{ext}" for k in range(n)]
    for k, path in enumerate(paths):
        Image.fromarray(synthetic_image(("red", "green", "blue")[k % 3], rng, size=40)).save(path)
    return paths


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with CUDA as the race asks about it (its timing waits for the device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)


def _decoder(seconds_per_file: float = 0.0, error: Exception | None = None) -> gpu_decode.Decoder:
    """A device decoder standing in for nvJPEG: torchvision's CPU decoder, made slower or failing."""
    real = nvjpeg(torch.device("cpu"))

    def decode(files):
        if error is not None:
            raise error
        time.sleep(seconds_per_file * len(files))
        return real(files)

    return decode


def test_no_race_without_cuda_or_without_jpegs(tmp_path, monkeypatch):
    jpegs = _jpegs(tmp_path, 3)
    no_cuda = gpu_decode.DecodeChoice("cpu", "cpu (no CUDA)")
    assert choose_decoder(jpegs, PREP, torch.device("cpu"), 4) == (None, no_cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_decoder(jpegs, PREP, CUDA, 4)[1].reason == "cpu (no CUDA)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pngs = _jpegs(tmp_path, 3, "png")
    assert choose_decoder(pngs, PREP, CUDA, 4)[1].reason == "cpu (not JPEG files)"
    batches, choice = decoded_batches(jpegs, PREP, 2, torch.device("cpu"))
    assert choice.to_dict()["reason"] == "cpu (no CUDA)" and sum(len(b.indices) for b in batches) == 3


def test_the_faster_decoder_wins_the_race_and_both_rates_are_recorded(tmp_path, fake_cuda, monkeypatch):
    jpegs = _jpegs(tmp_path, 6)
    real_load = gpu_decode.load_rgb
    monkeypatch.setattr(gpu_decode, "load_rgb", lambda *a: time.sleep(0.02) or real_load(*a))  # a slow CPU
    fast, choice = choose_decoder(jpegs, PREP, CUDA, workers=1, gpu=_decoder())
    assert choice.name == "gpu" and fast is not None, choice
    assert choice.gpu_images_per_second > choice.cpu_images_per_second > 0
    monkeypatch.setattr(gpu_decode, "load_rgb", real_load)
    slow, choice = choose_decoder(jpegs, PREP, CUDA, workers=1, gpu=_decoder(seconds_per_file=0.05))
    assert choice.name == "cpu" and slow is None, choice
    assert 0 < choice.gpu_images_per_second < choice.cpu_images_per_second


def test_a_failing_device_decoder_leaves_the_cpu_workers(tmp_path, fake_cuda):
    jpegs = _jpegs(tmp_path, 4)
    decoder, choice = choose_decoder(jpegs, PREP, CUDA, 4, gpu=_decoder(error=RuntimeError("nvjpeg: no")))
    assert decoder is None and choice.name == "cpu" and "failed: RuntimeError: nvjpeg: no" in choice.reason


def test_device_batches_match_the_cpu_path_and_a_bad_batch_falls_back(tmp_path):
    """The device path's pixels are the CPU path's within antialiasing differences; a batch holding
    a corrupt file is decoded by the CPU path, which names and skips that file only."""
    jpegs = _jpegs(tmp_path, 6)
    (tmp_path / "03.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cpu = list(iterate_batches(jpegs, PREP, 2, workers=0, decode_size=PREP.resize_size))
    device = list(gpu_batches(jpegs, PREP, 2, _decoder()))
    assert [b.indices.tolist() for b in device] == [b.indices.tolist() for b in cpu] == [[0, 1], [2], [4, 5]]
    assert [b.failures for b in device] == [[], [(3, cpu[1].failures[0][1])], []]
    for a, b in zip(device, cpu, strict=True):
        assert a.images.shape == b.images.shape and a.images.dtype == torch.uint8
        # JPEG decoders and resizes differ a little
        assert (a.images.float() - b.images.float()).abs().mean() < 8


def test_one_race_per_process_device_and_size(tmp_path, fake_cuda, monkeypatch):
    """A time budget's chunks of one extraction, and later extractions, reuse the first race."""
    races: list[int] = []
    real = gpu_decode.choose_decoder
    monkeypatch.setattr(gpu_decode, "_RACED", {})

    def race(*args, **kwargs):
        races.append(1)
        return real(*args, gpu=_decoder())

    monkeypatch.setattr(gpu_decode, "choose_decoder", race)
    jpegs = _jpegs(tmp_path, 4)
    for part in (jpegs[:2], jpegs[2:]):
        batches, choice = decoded_batches(part, PREP, 2, CUDA)
        assert len(races) == 1 and choice.name in ("gpu", "cpu")
    decoded_batches(_jpegs(tmp_path, 2, "png"), PREP, 2, CUDA)  # not JPEGs: a race of their own
    assert len(races) == 2
