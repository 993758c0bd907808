"""Batched inference: the outputs of a module for n inputs, in input order, on the CPU, on the engine
`runtime.engine` picks, optionally split between the processes of a run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..distributed import ranks
from .device import ahead, cuda_tuning, module_device
from .engine import choose_engine
from .precision import autocast


def forward_all(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    n: int,
    engine: str = "torch",
    on_engine: Any = None,
    across_ranks: bool = False,
    chosen: Any = None,
) -> torch.Tensor:
    """float32 outputs of `module` for n inputs, in input order, on the CPU. `batches` yields
    (input positions, inputs already on the module's device): a modality may batch inputs in any
    order (texts by length) and this puts the rows back. `engine` other than "torch" lets
    `runtime.engine.choose_engine` run single-tensor inputs (images) on ONNX Runtime when that is
    measured to be faster; `on_engine` receives its `EngineChoice`. `across_ranks` (every process
    of a multi-process run calls it): each process runs every world_size-th batch, and every
    process gets all the rows. `chosen`: a forward settled beforehand (a server's, raced once at
    start-up) that runs float inputs instead of choosing again."""
    module.eval()
    device = module_device(module)
    forward = None
    rows = OutputRows(n)
    size, me = (ranks.world_size(), ranks.rank()) if across_ranks else (1, 0)
    mine: list[torch.Tensor] = []
    # cuDNN's benchmark on, TF32 as the caller has it; the next batch's copy is queued first
    with cuda_tuning(device, tf32=None):
        for k, (index, x) in enumerate(ahead(batches)):
            if k % size != me:
                continue
            if forward is None:
                floats = isinstance(x, torch.Tensor) and x.is_floating_point()
                settled = chosen is not None and floats
                forward = chosen if settled else _forward_for(module, x, n, engine, on_engine)
            with torch.inference_mode(), autocast(device):
                y = forward(x).flatten(1).float()
            rows.add(index, y)  # outside inference mode: the CPU rows it makes stay writable
            if size > 1:
                mine.append(torch.as_tensor(index))
    out = rows.done()
    if size > 1:
        return _gathered_rows(out, mine, n)
    return out if out is not None else torch.zeros(0, 0)



# outputs held on the device before one copy to the CPU: 8,192 rows of 2,048 features (32 batches
# of 256 images), one chunk in all for logits; on the CPU the copy is a no-op and the chunk costs
# one extra copy of these rows (`torch.cat`), bounded by the same size
CHUNK_BYTES = 64 << 20


class OutputRows:
    """The outputs of a forward over batches (forward_all's, image extraction's): kept on the
    device and copied to the CPU in chunks of up to CHUNK_BYTES, so the host waits for the device
    once per chunk (once in all for logits and most extractions), not per batch, and a large
    extraction holds a bounded amount of device memory."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.out: torch.Tensor | None = None
        self.pending: list[tuple[Any, torch.Tensor]] = []
        self.bytes = 0

    def add(self, index: Any, y: torch.Tensor) -> None:
        self.pending.append((index, y))
        self.bytes += y.numel() * y.element_size()
        if self.bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        ys = [y for _, y in self.pending]
        chunk = (ys[0] if len(ys) == 1 else torch.cat(ys)).cpu()  # the chunk's one wait
        if self.out is None:
            self.out = torch.zeros(self.n, chunk.shape[1])
        self.out[torch.cat([torch.as_tensor(index) for index, _ in self.pending])] = chunk
        self.pending, self.bytes = [], 0

    def done(self) -> torch.Tensor | None:
        self.flush()
        return self.out


def _gathered_rows(out: torch.Tensor | None, mine: list[torch.Tensor], n: int) -> torch.Tensor:
    """Every process's rows of forward_all's output, put together in input order."""
    index = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.long)
    merged: torch.Tensor | None = None
    for rows_index, rows in ranks.gather_objects((index, None if out is None else out[index])):
        if rows is not None:
            if merged is None:
                merged = torch.zeros(n, rows.shape[1])
            merged[rows_index] = rows
    return merged if merged is not None else torch.zeros(0, 0)



def _forward_for(module: nn.Module, x: Any, n: int, engine: str, on_engine: Any) -> Any:
    if engine == "torch" or not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return module
    forward, choice = choose_engine(module, x, n, engine)
    if on_engine is not None:
        on_engine(choice)
    return forward

