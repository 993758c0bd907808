"""Data parallelism for the training loop: DistributedDataParallel through Accelerate, or the model
itself when alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ranks import _device, _group, _state, any_process, rank_seed, sum_all

if TYPE_CHECKING:
    from torch import nn


class DataParallel:
    """What the loop trains and agrees on. Alone (or `enabled=False`: the same work in every
    process, e.g. a head on cached features), the model itself and no communication. Otherwise
    DistributedDataParallel through `Accelerator.prepare_model`, over the parameters that train in
    the current stage (wrapped again when a stage changes them: gradual unfreezing), each process
    with its own random streams, the learning rate from rank 0's schedule (a time budget follows
    rank 0's clock) and a stop when any process stops."""

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model = model
        self.active = enabled and _group() is not None
        self.wrapped: nn.Module | None = None
        self.trains: tuple[bool, ...] = ()

    def seed(self, seed: int) -> int:
        return rank_seed(seed) if self.active else seed

    def wrap(self) -> nn.Module:
        if not self.active:
            return self.model
        trains = tuple(p.requires_grad for p in self.model.parameters())
        if self.wrapped is None or trains != self.trains:
            self.close()
            self.wrapped, self.trains = _state["accelerator"].prepare_model(self.model), trains
        return self.wrapped

    def lr(self, lr: float) -> float:
        if not self.active:
            return lr
        import torch
        from accelerate.utils import broadcast

        return float(broadcast(torch.tensor([lr], dtype=torch.float64, device=_device()), from_process=0))

    def stop(self, stop: bool) -> bool:
        return any_process(stop) if self.active else stop

    def totals(self, loss_sum: float, seen: int) -> tuple[float, int]:
        if not self.active:
            return loss_sum, seen
        total, count = sum_all(loss_sum, seen)
        return total, int(count)

    def close(self) -> None:
        if self.wrapped is not None:
            self.wrapped = None
            _state["accelerator"].free_memory()  # drops its reference to the old wrapper
