"""What graft asks of the CUDA GPU, in one place: whether there is one, how many, its compute
capability (bf16 in hardware from Ampere, 8.x), its memory, and emptying its allocator's cache.
graft's code asks `cuda_capabilities()` in place of `torch.cuda`, so the CUDA choices (precision,
the batch halved on out-of-memory, the processes of --devices N) run on a CPU under a recorded fake
(`use_capabilities`; tests/fixtures/h100_capabilities.json was recorded from a lent H100).

    python -m graft.runtime.capabilities      # this machine's set, as JSON (record a fake from it)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class CudaCapabilities:
    """The CUDA GPU as graft sees it (GPU 0; graft's GPUs in one run are alike)."""

    available: bool
    device_count: int = 0
    name: str = ""
    capability: tuple[int, int] = (0, 0)
    total_memory: int = 0  # bytes
    multiprocessors: int = 0

    @property
    def bf16_native(self) -> bool:
        """Ampere (8.x) and later; `torch.cuda.is_bf16_supported()` also says True where bf16 is
        only emulated (V100, T4), which is slower than fp16."""
        return self.available and self.capability[0] >= 8

    def empty_cache(self) -> None:
        """Hand the caching allocator's free blocks back (after an out-of-memory error)."""
        if self.available:
            self._release()

    def _release(self) -> None:  # a recorded fake counts these in place of emptying
        torch.cuda.empty_cache()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "capability": list(self.capability)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CudaCapabilities:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "capability": tuple(known.get("capability", (0, 0)))})

    @classmethod
    def from_json(cls, path: str | Path) -> CudaCapabilities:
        return cls.from_dict(json.loads(Path(path).read_text()))


@cache
def _probed() -> CudaCapabilities:
    if not torch.cuda.is_available():
        return CudaCapabilities(available=False)
    props = torch.cuda.get_device_properties(0)
    return CudaCapabilities(
        available=True,
        device_count=torch.cuda.device_count(),
        name=props.name,
        capability=(props.major, props.minor),
        total_memory=props.total_memory,
        multiprocessors=props.multi_processor_count,
    )


_fake: list[CudaCapabilities] = []  # the innermost `use_capabilities` block's set


def cuda_capabilities() -> CudaCapabilities:
    """This machine's CUDA GPU (probed once), or the fake a `use_capabilities` block gives."""
    return _fake[-1] if _fake else _probed()


@contextmanager
def use_capabilities(fake: CudaCapabilities) -> Iterator[CudaCapabilities]:
    """Inside the block graft's code sees `fake` as the machine's GPU (tests: CUDA paths on a CPU)."""
    _fake.append(fake)
    try:
        yield fake
    finally:
        _fake.pop()


if __name__ == "__main__":
    print(json.dumps(_probed().to_dict(), indent=2))
