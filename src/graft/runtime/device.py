"""The device graft computes on: chosen once (`resolve_device`), its CUDA tuning for training, and
waiting for its queued work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"



def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): the first CUDA GPU when there is one, else the CPU. An explicit device that
    this machine lacks is a one-line error, not a silent fall-back."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown --device {spec!r}: use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA GPU is visible to PyTorch; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ..)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {spec}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported --device {spec!r}: use {DEVICE_CHOICES}")
    return device



@contextmanager
def cuda_tuning(device: torch.device) -> Iterator[None]:
    """Training on a CUDA GPU as timm's and Lightning's training scripts do: cuDNN benchmarks its
    convolution algorithms once per input shape (graft's training shapes are fixed, or a few with
    progressive resizing), and fp32 matrix products may use TF32 (what cuDNN's convolutions already
    do by default; under bf16/fp16 autocast it touches only the few ops kept in fp32). The settings
    are PyTorch's global switches, so they are restored when the block ends: prediction and export
    parity keep PyTorch's defaults. Nothing changes on other devices."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = True, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = previous



def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs ahead of the host); a no-op elsewhere. Only
    what reads the clock to time steps calls it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)



def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device

