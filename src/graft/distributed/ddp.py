"""Data parallelism for the training loop: DistributedDataParallel through Accelerate, or the model
itself when alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ranks import _group, _state, any_process, rank, rank_seed, sum_all

if TYPE_CHECKING:
    from torch import nn


AGREE_EVERY = 25  # optimizer steps between two agreements on stopping in a multi-process run


class DataParallel:
    """What the loop trains and agrees on. Alone (or `enabled=False`: the same work in every
    process, e.g. a head on cached features), the model itself and no communication. Otherwise
    DistributedDataParallel through `Accelerator.prepare_model`, over the parameters that train in
    the current stage (wrapped again when a stage changes them: gradual unfreezing), each process
    with its own random streams, a stop when any process stops and, under a time budget, rank 0's
    clock (`agree`), from which every process computes the same learning rates."""

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

    def agrees_after(self, step: int) -> bool:
        """Whether the processes agree on stopping after optimizer step `step`: alone, after every
        step; together, every AGREE_EVERY steps (and at each epoch's end), since agreeing is a
        collective the host waits for. A stop one process decides comes at most that many steps late,
        at the same step in every process."""
        return not self.active or step % AGREE_EVERY == 0

    def stop(self, stop: bool) -> bool:
        return any_process(stop) if self.active else stop

    def agree(self, stop: bool, clock: tuple[float, ...] | None) -> tuple[bool, tuple[float, ...] | None]:
        """One collective for both: a stop when any process stops, and rank 0's `clock` reading
        (a clock schedule's, `loop.ClockSchedule.reading`) in every process, which each then
        extrapolates by its step count until the next agreement: the same learning rates in every
        process without a collective per step."""
        if not self.active:
            return stop, clock
        if clock is None:
            return self.stop(stop), None
        mine = clock if rank() == 0 else (0.0,) * len(clock)  # a sum of rank 0's values and zeros
        total, *main = sum_all(float(stop), *mine)
        return total > 0, tuple(main)

    def totals(self, loss_sum: float, seen: int) -> tuple[float, int]:
        if not self.active:
            return loss_sum, seen
        total, count = sum_all(loss_sum, seen)
        return total, int(count)

    def close(self) -> None:
        if self.wrapped is not None:
            self.wrapped = None
            _state["accelerator"].free_memory()  # drops its reference to the old wrapper
