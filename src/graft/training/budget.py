"""--time-budget's clock. The runner builds one `Clock` per run from the config, and everything
that plans against the budget asks it: what is left (`left`), the deadline and LR schedule of
fine-tuning (`schedule`), whether a step after training still fits (`affords`) and what a longer
budget would have given (`advice`). Nothing else reads the config's budget.

Reading and extracting the data within the budget is `subset`'s; fine-tuning's deadline keeps back
the final evaluation and writing (`schedule`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ..distributed import ranks
from .callbacks import Deadline
from .loop import Callback, clock_schedule, step_schedule

BUDGET_EPOCH_CAP = 100_000  # under --time-budget without --epochs the deadline ends training


def _now() -> float:
    """The run's clock for the budget (one place: a test can make extraction seem slow or fast)."""
    return time.perf_counter()


@dataclass(frozen=True)
class Epochs:
    """Fine-tuning's epochs as people see them: a count, or under --time-budget about that many."""

    count: int
    approximate: bool = False

    def __str__(self) -> str:
        return f"~{self.count}" if self.approximate else str(self.count)


@dataclass(frozen=True)
class Schedule:
    """Fine-tuning's epochs, LR schedule and limits, on the clock or on the plan's epochs."""

    epochs: int  # the loop's epochs
    lr_schedule: Any  # `loop.step_schedule`, or `loop.clock_schedule` towards the deadline
    limits: list[Callback]  # a `Deadline` under the budget
    shown: Epochs  # what the epoch lines count to
    line: str | None = None  # what the budget did, for people


@dataclass(frozen=True)
class Clock:
    """The run's time budget: its seconds (None without --time-budget) from `started`."""

    seconds: float | None
    started: float

    @staticmethod
    def budget_of(config: Any) -> float | None:
        """The one reading of a config's --time-budget (the runner's clock, graft compare's shares)."""
        return config.time_budget

    @staticmethod
    def start(config: Any, started: float) -> Clock:
        """The run's clock, from its start (the runner builds it once)."""
        return Clock(Clock.budget_of(config), started)

    @property
    def on(self) -> bool:
        return bool(self.seconds)

    def left(self) -> float | None:
        """Seconds of --time-budget not yet spent (None without a budget)."""
        if not self.seconds:
            return None
        return self.seconds - (_now() - self.started)

    def decide_left(self) -> float | None:
        """What is left, as rank 0's clock says: one plan for every process."""
        return ranks.from_main(self.left())

    def ends_training(self, epochs_given: int | None) -> bool:
        """Whether the deadline, not a count of epochs, ends fine-tuning."""
        return self.seconds is not None and not epochs_given

    def part(self, fraction: float) -> Clock:
        """The clock of a step allowed `fraction` of the budget from the run's start (`--backbone
        auto`'s pick); without a budget, none."""
        return Clock(self.seconds * fraction if self.seconds else None, self.started)

    def share(self, runs_left: int) -> Clock:
        """The clock of the next of `runs_left` runs: an equal share of what is left, as a
        deadline counted from the run's start (`left`)."""
        if not self.seconds:
            return Clock(None, self.started)
        spent = _now() - self.started
        return Clock(spent + (self.seconds - spent) / runs_left, self.started)

    def decide_schedule(
        self, per_step: float, n_eval: int, batch_size: int, steps_per_epoch: int, epochs: int | None
    ) -> Schedule:
        """Under the budget: a deadline that keeps back the final evaluation (`n_eval` inputs; a
        forward is ~1/3 of a training step of `per_step` seconds) and a 3% margin, and an LR
        schedule on the clock; the epochs that fit are rank 0's count, for every process. The
        deadline, not a count from a timing (a busy moment can make it pessimistic), ends training
        and anneals the LR: only --epochs (`epochs`) caps the epochs."""
        assert self.seconds
        reserve = n_eval * per_step / (3 * batch_size) + 0.03 * self.seconds
        deadline = self.started + self.seconds - reserve
        fitting = max(1, round((deadline - _now()) / (per_step * steps_per_epoch)))
        # several processes: rank 0's deadline (as seconds from now: each process's clock has its
        # own start), its timing and its epochs, decided once for every process
        left, fitting, cap = ranks.from_main((deadline - _now(), fitting, epochs or BUDGET_EPOCH_CAP))
        deadline = _now() + left
        shown = Epochs(fitting, approximate=True) if not epochs else Epochs(min(cap, fitting))
        line = (
            f"time budget {self.seconds:.0f}s: {per_step:.3f}s per step, training until "
            f"{deadline - self.started:.0f}s (about {fitting} epoch(s)), the schedule follows the clock"
        )
        return Schedule(cap, clock_schedule(deadline, per_step), [Deadline(deadline)], shown, line)

    @staticmethod
    def by_epochs(epochs: int) -> Schedule:
        """Without a budget: the plan's epochs on the step schedule."""
        return Schedule(epochs, step_schedule, [], Epochs(epochs))

    def decide_affords(self, last_seconds: float) -> bool:
        """Whether another step as long as the last still fits, a tenth of the budget kept for the
        test and the bundle; rank 0's answer for every process."""
        left = self.left()
        return bool(ranks.from_main(left is None or left - 0.1 * self.seconds > 2 * last_seconds))

    def advice(
        self,
        history: list[dict[str, Any]],
        monitor: str,
        train_seconds: float,
        epochs_given: int | None,
        what: str,
    ) -> list[str]:
        """When the clock ended training (the caller knows) on its best epoch yet: the budget that
        would allow two more epochs."""
        scores = [row[monitor] for row in history if monitor in row]
        if not self.seconds or epochs_given or len(scores) < 2 or scores[-1] <= max(scores[:-1]):
            return []
        more = math.ceil(self.seconds + 2 * train_seconds / len(history))
        return [
            f"validation still rose when the time budget ended fine-tuning ({what} "
            f"{scores[-2]:.4f} -> {scores[-1]:.4f}): --time-budget {more} would allow about 2 more epochs"
        ]

