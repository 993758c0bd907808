"""The image modality's input sizes: progressive resizing's per-epoch crop sizes, and whether a
network takes a given size."""

from __future__ import annotations

import torch
from torch import nn

# Progressive resizing (fastai, Howard 2018; EfficientNetV2's progressive learning, Tan & Le 2021):
# the first unfrozen epoch trains on crops 2/3 of the input size (under half the pixels), growing
# to the full size by the last epoch, so the last epochs train at the size it is evaluated at.
# 2/3 is the middle of the usual range (fastai's 128 -> 224, EfficientNetV2's ~0.5 -> 1), not
# tuned here; `python -m bench levers --only progressive_resize` is the side-by-side.
PROGRESSIVE_START = 2 / 3


def progressive_sizes(full: int, epochs: int) -> list[int]:
    """Training crop sizes per epoch for progressive resizing: from PROGRESSIVE_START of the input
    size up to all of it at the last epoch, in equal steps, each a multiple of 8 (the strides of
    CNNs divide it)."""
    if epochs <= 1:
        return [full] * max(epochs, 0)
    first = PROGRESSIVE_START * full
    steps = [first + (full - first) * e / (epochs - 1) for e in range(epochs)]
    sizes = [min(full, max(8, round(size / 8) * 8)) for size in steps]  # never above the full size
    sizes[-1] = full
    return sizes


@torch.no_grad()
def takes_size(model: nn.Module, size: int) -> bool:
    """Whether the network runs on size x size inputs (some, ViTs without dynamic image sizes,
    take only the size they were built for)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        model(torch.zeros(2, 3, size, size, device=device))
        return True
    except (RuntimeError, AssertionError, ValueError):
        return False
    finally:
        model.train(was_training)
