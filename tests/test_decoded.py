"""The decoded-image store: training images decoded once (in worker processes) into one file under
GRAFT_CACHE_DIR, read back per image, reused by the next run, unreadable files reported."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image
from torch.utils.data import DataLoader

from graft.data import decoded
from graft.data.decoded import decode_to_store
from graft.data.images import load_rgb


@pytest.fixture
def sources(tmp_path) -> list[str]:
    root = make_image_folder(tmp_path / "data", per_class=4, seed=3)
    big = root / "red" / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), np.uint8)).save(big)
    (root / "blue" / "broken.jpg").write_bytes(b"not a jpeg")
    return sorted(str(p) for p in root.glob("*/*"))


def test_the_store_holds_each_image_as_decoded_and_reports_the_unreadable(sources, tmp_path):
    images, failures = decode_to_store(sources, 64, "fp-1", tmp_path / "cache")
    broken = sources.index(str(Path(sources[0]).parent / "broken.jpg"))
    assert list(failures) == [broken] and "broken.jpg" in failures[broken]
    for i, src in enumerate(sources):
        if i == broken:
            continue
        want = np.asarray(load_rgb(src, 64))
        if min(want.shape[:2]) > 64:  # the short side capped at the training resolution
            img = load_rgb(src, 64)
            scale = 64 / min(img.size)
            want = np.asarray(img.resize((round(img.width * scale), round(img.height * scale)), 3))
        np.testing.assert_array_equal(images[i].permute(1, 2, 0).numpy(), want)
    big = sources.index(next(s for s in sources if s.endswith("big.jpg")))
    assert tuple(images[big].shape) == (3, 64, 107)


def test_a_second_run_reads_the_store_without_decoding(sources, tmp_path, monkeypatch):
    first, _ = decode_to_store(sources, 64, "fp-2", tmp_path / "cache")

    def never(self, i):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decoded._Decode, "__getitem__", never)
    again, failures = decode_to_store(sources, 64, "fp-2", tmp_path / "cache")
    assert len(failures) == 1 and again.blob == first.blob
    assert all(torch.equal(again[i], first[i]) for i in range(len(sources)) if i not in failures)


def test_dataloader_workers_read_the_store(sources, tmp_path):
    images, failures = decode_to_store(sources, 32, "fp-3", tmp_path / "cache")
    keep = [i for i in range(len(sources)) if i not in failures and images[i].shape[1:] == (32, 32)]
    subset = pickle.loads(pickle.dumps(images.subset(keep)))  # as a worker receives it
    loader = DataLoader(subset, batch_size=4, num_workers=1)
    got = torch.cat(list(loader))
    assert torch.equal(got, torch.stack([images[i] for i in keep]))
