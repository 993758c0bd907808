"""Where the arithmetic runs: the device (chosen once), its autocast, and batched inference.

Training, feature extraction and prediction all take their device and precision from here, so a
GPU, a CPU with native bf16 and a plain CPU follow one code path.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from . import distributed
from .errors import ConfigError

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


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays only where the hardware has it (AVX512-BF16/AMX on CPU, Ampere+ on GPU);
    emulated bf16 is several times slower than fp32 on older CPUs."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type for `device`: bf16 where native, fp16 on older CUDA GPUs, else None."""
    if bf16_supported(device):
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return None


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def forward_all(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    n: int,
    engine: str = "torch",
    on_engine: Any = None,
    across_ranks: bool = False,
) -> torch.Tensor:
    """float32 outputs of `module` for n inputs, in input order, on the CPU. `batches` yields
    (input positions, inputs already on the module's device): a modality may batch inputs in any
    order (texts by length) and this puts the rows back. `engine` other than "torch" lets
    `graft.engine.choose_engine` run single-tensor inputs (images) on ONNX Runtime when that is
    measured to be faster; `on_engine` receives its `EngineChoice`. `across_ranks` (every process
    of a multi-process run calls it): each process runs every world_size-th batch, and every
    process gets all the rows."""
    module.eval()
    device = module_device(module)
    forward = None
    out: torch.Tensor | None = None
    size, me = (distributed.world_size(), distributed.rank()) if across_ranks else (1, 0)
    mine: list[torch.Tensor] = []
    for k, (index, x) in enumerate(batches):
        if k % size != me:
            continue
        if forward is None:
            forward = _forward_for(module, x, n, engine, on_engine)
        with torch.inference_mode(), autocast(device):
            y = forward(x).flatten(1).float().cpu()
        if out is None:
            out = torch.zeros(n, y.shape[1])
        out[index] = y
        if size > 1:
            mine.append(torch.as_tensor(index))
    if size > 1:
        return _gathered_rows(out, mine, n)
    return out if out is not None else torch.zeros(0, 0)


def _gathered_rows(out: torch.Tensor | None, mine: list[torch.Tensor], n: int) -> torch.Tensor:
    """Every process's rows of forward_all's output, put together in input order."""
    index = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.long)
    merged: torch.Tensor | None = None
    for rows_index, rows in distributed.gather_objects((index, None if out is None else out[index])):
        if rows is not None:
            if merged is None:
                merged = torch.zeros(n, rows.shape[1])
            merged[rows_index] = rows
    return merged if merged is not None else torch.zeros(0, 0)


def _forward_for(module: nn.Module, x: Any, n: int, engine: str, on_engine: Any) -> Any:
    if engine == "torch" or not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return module
    from .engine import choose_engine

    forward, choice = choose_engine(module, x, n, engine)
    if on_engine is not None:
        on_engine(choice)
    return forward
