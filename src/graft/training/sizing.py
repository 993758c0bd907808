"""Batch sizes for the device. The modalities' defaults (64 images, 32 texts a fine-tuning step) are
sized for a CPU, where a larger batch does not run faster per example. On a CUDA GPU a step of 64
small images leaves most of the device idle, so fine-tuning takes a larger batch there, and the
learning rate follows it by the square-root rule for Adam-type optimisers (Malladi et al. 2022,
"On the SDEs and scaling rules for adaptive gradient algorithms": batch x k, LR x sqrt(k)). On the
CPU, three seeds each (`python -m bench accuracy --only batch_lr_rule`, docs/guide/distributed.md),
it and the linear rule (LR x k, SGD's) are within noise of each other, so the literature decides.

The rule, for a batch size and LR the user left unset:
- the batch grows 4x (else 2x) only while an epoch keeps at least MIN_STEPS_PER_EPOCH optimizer
  steps, so small datasets keep the updates they need (a 5,000-image set stays at 64);
- if a step at that batch does not fit in the GPU's memory, it halves until it does (not below the
  default), the LR with it.
Inference (frozen-feature extraction) takes INFERENCE_BATCH_CUDA on a GPU: it keeps no activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..runtime.capabilities import cuda_capabilities

GPU_BATCH_SCALES = (4, 2)  # tried in order: the first that leaves enough steps an epoch
MIN_STEPS_PER_EPOCH = 100
INFERENCE_BATCH_CUDA = 256
LR_RULE = "the square-root rule for Adam"


@dataclass(frozen=True)
class BatchChoice:
    batch_size: int
    lr_factor: float  # multiplies the default LR (the square-root rule)
    note: str | None = None


def device_batch(default: int, n_train: int, device: torch.device) -> BatchChoice:
    """The fine-tuning batch for `device` when the user gave none (see the module's rule)."""
    if device.type != "cuda":
        return BatchChoice(default, 1.0)
    for scale in GPU_BATCH_SCALES:
        if n_train // (default * scale) >= MIN_STEPS_PER_EPOCH:
            batch = default * scale
            return BatchChoice(batch, lr_factor(batch, default), _note(default, batch))
    return BatchChoice(default, 1.0)


def lr_factor(batch: int, default: int) -> float:
    """What the default LR is multiplied by at `batch` in place of `default` (the module's rule)."""
    return math.sqrt(batch / default)


def _note(default: int, batch: int) -> str:
    return (
        f"batch {batch} instead of {default} on the GPU (at least {MIN_STEPS_PER_EPOCH} steps an "
        f"epoch), learning rate x{lr_factor(batch, default):.2g} ({LR_RULE})"
    )


def inference_batch(device: torch.device, default: int) -> int:
    return max(default, INFERENCE_BATCH_CUDA) if device.type == "cuda" else default


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    return tuple(e for e in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if e)


def largest_fitting(try_step: Callable[[int], object], batch: int, floor: int) -> int:
    """The largest of batch, batch/2, ... (not below `floor`) for which `try_step(batch)` runs
    without running out of device memory; at `floor` an out-of-memory error is raised as it is."""
    while True:
        try:
            try_step(batch)
            return batch
        except out_of_memory_errors():
            if batch // 2 < floor:
                raise
            cuda_capabilities().empty_cache()
            batch //= 2
