"""Training samples from decoded images (`graft.data.decoded`: decoded once, to disk), augmented per
sample: random-resized-crop + flip (light), plus TrivialAugment (strong).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
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


class MemoryDataset(Dataset):
    """(augmented uint8 image, label) pairs from decoded tensors."""

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        labels: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.images, self.labels, self.transform = images, torch.as_tensor(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]
