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
    out: torch.Tensor | None = None
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

