"""The device graft computes on: chosen once (`resolve_device`), its CUDA tuning for training, and
waiting for its queued work."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from .capabilities import cuda_capabilities

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
T = TypeVar("T")



def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): the first CUDA GPU when there is one, else the CPU. An explicit device that
    this machine lacks is a one-line error, not a silent fall-back."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if cuda_capabilities().available else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown --device {spec!r}: use {DEVICE_CHOICES}") from None
    gpus = cuda_capabilities()
    if device.type == "cuda":
        if not gpus.available:
            raise ConfigError(f"--device {spec}: no CUDA GPU is visible to PyTorch; use --device cpu")
        if device.index is not None and device.index >= gpus.device_count:
            count = gpus.device_count
            raise ConfigError(f"--device {spec}: this machine has {count} CUDA GPU(s) (cuda:0 ..)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {spec}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported --device {spec!r}: use {DEVICE_CHOICES}")
    return device



SYNC_DEBUG_ENV = "GRAFT_SYNC_DEBUG"  # 1: a host wait inside a training epoch's steps raises (CUDA)
_sync_debug = {"on": False}  # whether `no_host_waits` has set PyTorch's sync debug mode


@contextmanager
def cuda_tuning(device: torch.device, tf32: bool | None = True) -> Iterator[None]:
    """Computing on a CUDA GPU as timm's and Lightning's scripts do: cuDNN benchmarks its
    convolution algorithms once per input shape (graft's shapes are fixed, or a few with
    progressive resizing), and with `tf32` (training, extraction) fp32 matrix products may use TF32
    (what cuDNN's convolutions already do by default; under bf16/fp16 autocast it touches only the
    few ops kept in fp32). With False they may not; None (evaluation, prediction) leaves TF32 as it
    is: on inside training, PyTorch's default (off) in a parity check or fp32 prediction. The settings
    are PyTorch's global switches, so they are restored when the block ends. Nothing changes on
    other devices."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = previous[1] if tf32 is None else tf32
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = previous


@contextmanager
def no_host_waits(device: torch.device) -> Iterator[None]:
    """The steps of a training epoch, where the host never waits for the device. Under
    GRAFT_SYNC_DEBUG=1 on CUDA, PyTorch raises at any wait inside the block
    (`torch.cuda.set_sync_debug_mode("error")`); the documented ones go through `host_waits_allowed`."""
    if device.type != "cuda" or os.environ.get(SYNC_DEBUG_ENV, "").strip() != "1" or _sync_debug["on"]:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    _sync_debug["on"] = True
    try:
        yield
    finally:
        _sync_debug["on"] = False
        torch.cuda.set_sync_debug_mode(previous)


@contextmanager
def host_waits_allowed() -> Iterator[None]:
    """A documented wait for the device inside `no_host_waits`: the trackers' read every 100 steps,
    the clock's reads, the agreements of several processes, a one-off constant."""
    if not _sync_debug["on"]:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("default")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` without the host waiting: a copy to a CUDA GPU from pageable memory
    waits for the device, from page-locked (pinned) memory it does not. Elsewhere `.to(device)`."""
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def ahead(items: Iterable[T]) -> Iterator[T]:
    """`items` fetched one ahead: the next batch is read (and its non-blocking copy to the device
    queued) before the consumer computes on this one, so the copy overlaps the computation."""
    pending: list[T] = []
    for item in items:
        pending.append(item)
        if len(pending) > 1:
            yield pending.pop(0)
    yield from pending


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs ahead of the host); a no-op elsewhere. Only
    what reads the clock to time steps calls it."""
    if device.type == "cuda":
        with host_waits_allowed():
            torch.cuda.synchronize(device)



def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device

