"""Decode once: every training image held as a uint8 tensor, so JPEG decoding does not repeat each epoch.

Images are stored at most at the resolution training needs (short side capped at `max_side`) and
augmented per sample from that copy: random-resized-crop + flip (light), plus TrivialAugment (strong).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..backbones import Preprocessing
from .images import UnreadableImage, load_rgb
from .pipeline import Source

AUGMENTATIONS = ("none", "light", "strong")


def decode_all(sources: Sequence[Source], max_side: int) -> tuple[list[torch.Tensor], dict[int, str]]:
    """uint8 CHW tensors, short side at most `max_side`; unreadable sources are reported, not fatal."""
    images: list[torch.Tensor] = []
    failures: dict[int, str] = {}
    for i, src in enumerate(sources):
        try:
            img = load_rgb(src, max_side)  # a large JPEG decodes near max_side (draft)
        except UnreadableImage as err:
            failures[i] = str(err)
            images.append(torch.zeros(3, 1, 1, dtype=torch.uint8))
            continue
        short = min(img.size)
        if short > max_side:
            scale = max_side / short
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), 3)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous())
    return images, failures


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
