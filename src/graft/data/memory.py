"""Training samples from decoded images (`graft.data.decoded`: decoded once, to disk), augmented per
sample: random-resized-crop + flip (light), plus TrivialAugment (strong).

A sample's augmentation is a function of (seed, epoch, index) alone: the epoch travels with each
index from the batch sampler (`EpochBatches`) to the loader's workers. So workers can persist across
epochs (no start-up per epoch) and a resumed run still augments exactly as an uninterrupted one,
whatever the number of workers or processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from ..backbones import Preprocessing

AUGMENTATIONS = ("none", "light", "strong")


def train_transform(prep: Preprocessing, augment: str) -> Callable[[torch.Tensor], torch.Tensor]:
    mode = v2.InterpolationMode(prep.interpolation)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown --augment {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if augment == "none":
        return v2.Compose(
            [v2.Resize(prep.resize_size, interpolation=mode, antialias=True), v2.CenterCrop(prep.input_size)]
        )
    steps: list[Callable] = [
        v2.RandomResizedCrop(prep.input_size, scale=(0.35, 1.0), interpolation=mode, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "strong":
        # torchvision's tensor ops take NEAREST or BILINEAR only (a backbone's bicubic is refused)
        trivial = mode if mode in (v2.InterpolationMode.NEAREST, v2.InterpolationMode.BILINEAR) else None
        steps.append(v2.TrivialAugmentWide(interpolation=trivial or v2.InterpolationMode.BILINEAR))
    return v2.Compose(steps)


Transform = Callable[[torch.Tensor], torch.Tensor]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch (distinct for every (epoch, index))."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63)


class MemoryDataset(Dataset):
    """(augmented uint8 image, label) pairs from decoded tensors. An item is `index`, or
    `(epoch, index)`: then its random augmentation is seeded by (seed, epoch, index), and the
    transform is the epoch's (`transform_for`, for a size schedule)."""

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        labels: np.ndarray,
        transform: Transform,
        seed: int = 0,
        transform_for: Callable[[int], Transform] | None = None,
    ) -> None:
        self.images, self.labels, self.transform = images, torch.as_tensor(labels), transform
        self.seed, self.transform_for = seed, transform_for

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(key, tuple):
            return self.transform(self.images[key]), self.labels[key]
        epoch, i = key
        transform = self.transform_for(epoch) if self.transform_for else self.transform
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            return transform(self.images[i]), self.labels[i]


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """A DataLoader batch sampler of (epoch, index) items: the epoch's order is a permutation drawn
    from (seed, epoch); `set_epoch` before each pass (as with DistributedSampler)."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool) -> None:
        self.n, self.batch_size, self.seed, self.drop_last = n, batch_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield [(self.epoch, i) for i in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)
