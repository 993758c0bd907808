"""Where the arithmetic runs: the device (chosen once), the precision (decided once, by
`resolve_precision`), its autocast, and batched inference.

Training, feature extraction and prediction all take their device and precision from here, so a
GPU, a CPU with native bf16 and a plain CPU follow one code path. A run or predictor applies its
resolved precision with `use_precision`; code outside one computes in fp32, so two numbers graft
compares are computed alike unless a precision was asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import PRECISION_CHOICES
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


_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Overrides what `auto` believes about this CPU's bf16 (1: native, 0: none): lets an AVX2 machine
# (CI) run what a CPU with AVX512-BF16/AMX runs, and the other way round.
CPU_BF16_ENV = "GRAFT_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products in hardware (or GRAFT_CPU_BF16=1/0 says otherwise)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8) and later; `torch.cuda.is_bf16_supported()` also says True
    where bf16 is only emulated (V100, T4), which is slower than fp16."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bf16 in hardware (Ampere+ GPUs, CPUs with AVX512-BF16/AMX); emulated
    bf16 is several times slower than fp32 on older CPUs."""
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    return device.type == "cpu" and cpu_has_native_bf16()


@dataclass(frozen=True)
class Precision:
    """The arithmetic of a run or a predictor: fp32, or autocast to bf16/fp16 (weights stay fp32)."""

    name: str  # fp32, bf16 or fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


FP32 = Precision("fp32", "the default outside a run or predictor")


def resolve_precision(spec: str | None, device: torch.device) -> Precision:
    """--precision for `device`, decided here only. `auto`: bf16 on GPUs that have it and on CPUs
    with native bf16 (Lite0 extraction 2.2x fp32 there, bench/extraction_levers.py), fp16 with loss
    scaling on older CUDA GPUs, fp32 elsewhere (emulated bf16 is 5-12x slower than fp32 on AVX2)."""
    spec = (spec or "auto").strip().lower()
    if spec not in PRECISION_CHOICES:
        raise ConfigError(f"unknown --precision {spec!r}: use {', '.join(PRECISION_CHOICES)}")
    if spec == "auto":
        return _auto_precision(device)
    if spec == "fp16" and device.type != "cuda":
        raise ConfigError(f"--precision fp16 needs a CUDA GPU, not {device.type}: use bf16 or fp32")
    if spec == "bf16" and device.type == "cuda" and not cuda_has_native_bf16(device):
        raise ConfigError("--precision bf16: this GPU has no bf16 (before Ampere): use fp16 or fp32")
    if spec == "bf16" and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--precision bf16 is not supported on {device.type}: use fp32")
    note = ""
    if spec == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        note = " (emulated on this CPU: several times slower than fp32)"
    return Precision(spec, f"given with --precision{note}")


def _auto_precision(device: torch.device) -> Precision:
    if device.type == "cuda":
        if cuda_has_native_bf16(device):
            return Precision("bf16", "auto: this GPU has bf16")
        return Precision("fp16", "auto: this GPU has no bf16 (fp16 with loss scaling)")
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return Precision("bf16", "auto: this CPU has native bf16 (AVX512-BF16/AMX), about 2x fp32")
        return Precision("fp32", "auto: this CPU has no native bf16 (emulated bf16 is slower than fp32)")
    return Precision("fp32", f"auto: fp32 on {device.type}")


_current: ContextVar[Precision] = ContextVar("graft_precision", default=FP32)


@contextmanager
def use_precision(precision: Precision) -> Iterator[Precision]:
    """Run the block (training, extraction, prediction) at `precision`; outside any block graft
    computes in fp32."""
    token = _current.set(precision)
    try:
        yield precision
    finally:
        _current.reset(token)


def current_precision() -> Precision:
    return _current.get()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast type on `device` under the current precision (None: fp32)."""
    dtype = current_precision().dtype
    if dtype is None or device.type not in ("cpu", "cuda"):
        return None
    return dtype


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


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
