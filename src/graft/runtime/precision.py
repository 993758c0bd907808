"""The precision of a run or predictor: decided once (`resolve_precision`), applied with
`use_precision`, and its autocast. Training, feature extraction and prediction all take their
precision from here, so a GPU, a CPU with native bf16 and a plain CPU follow one code path; code
outside a run or predictor computes in fp32, so two numbers graft compares are computed alike
unless a precision was asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

from ..config import PRECISION_CHOICES
from ..errors import ConfigError
from .capabilities import cuda_capabilities

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
    """Ampere (compute capability 8) and later (`CudaCapabilities.bf16_native`)."""
    return cuda_capabilities().bf16_native



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
    with native bf16 (Lite0 extraction 2.2x fp32 there, `python -m bench speed --only
    extraction_levers`), fp16 with loss scaling on older CUDA GPUs, fp32 elsewhere (emulated bf16
    is 5-12x slower than fp32 on AVX2)."""
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

