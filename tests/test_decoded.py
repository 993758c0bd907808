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


def _training_images(workers: int):
    from graft.backbones._registry import Preprocessing
    from graft.modalities.image import _TrainingImages

    torch.manual_seed(0)
    images = [torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8) for _ in range(12)]
    return _TrainingImages(images, np.arange(12) % 2, Preprocessing(input_size=32), "light", workers=workers)


def _epoch(train, epoch: int) -> torch.Tensor:
    batches = train.batches(4, seed=5, device=torch.device("cpu"))
    return torch.cat([x for x, _ in batches(epoch)])


def test_augmentation_depends_on_seed_epoch_and_index_not_on_workers():
    """A persistent worker, a fresh one and the main process augment an epoch's samples alike, and
    the main process's random stream (dropout's) is left as it was: a resumed run trains on the same
    batches as an uninterrupted one."""
    in_workers, in_main = _training_images(workers=2), _training_images(workers=0)
    first, second = _epoch(in_workers, 0), _epoch(in_workers, 1)  # the same workers serve both
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(_epoch(in_main, 1), second)
    assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(_epoch(in_main, 0), first)
    assert not torch.equal(first, second)  # another epoch: another shuffle and other crops
    resumed = _training_images(workers=2)
    assert torch.equal(_epoch(resumed, 1), second)  # epoch 1 first, as after a resume


def test_the_training_loader_and_its_workers_persist_across_epochs():
    train = _training_images(workers=1)
    batches = train.batches(4, seed=0, device=torch.device("cpu"))
    list(batches(0))
    loader = train._loader[1]
    pids = {w.pid for w in loader._iterator._workers}
    list(batches(1))
    assert train._loader[1] is loader and {w.pid for w in loader._iterator._workers} == pids
    next(iter(batches(2)))  # an epoch left early (the deadline) does not disturb the next one
    assert len(list(batches(3))) == 3
    train.close()
    assert train._loader is None
