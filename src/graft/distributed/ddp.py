"""Data parallelism for the training loop: DistributedDataParallel through Accelerate, or the model
itself when alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ranks import _device, _group, _state, any_process, rank_seed, sum_all

if TYPE_CHECKING:
    from torch import nn


AGREE_EVERY = 25  # optimizer steps between two agreements on stopping in a multi-process run


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

    def lr(self, lr: float, shared: bool = False) -> float:
        """Rank 0's `lr`, in every process. `shared`: the schedule is a function of the step count
        alone (the same in every process), so there is nothing to agree on and nothing to wait for;
        a clock's schedule (a time budget) is agreed every step, a read of the clock."""
        if not self.active or shared:
            return lr
        import torch
        from accelerate.utils import broadcast

        return float(broadcast(torch.tensor([lr], dtype=torch.float64, device=_device()), from_process=0))

    def agrees_after(self, step: int) -> bool:
        """Whether the processes agree on stopping after optimizer step `step`: alone, after every
        step; together, every AGREE_EVERY steps (and at each epoch's end), since agreeing is a
        collective the host waits for. A stop one process decides comes at most that many steps late,
        at the same step in every process."""
        return not self.active or step % AGREE_EVERY == 0

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
