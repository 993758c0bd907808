"""Training strategies as plain functions of the epoch: which layer groups train, at what LR multiplier.

A strategy never touches the model; the training loop applies the `Stage` it returns. Group names
come from the backbone (stem, blocks..., in order) plus the new head, always called "head".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from ..errors import ConfigError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: this module stays pure
if TYPE_CHECKING:
    from ..tasks.base import Headroom  # a task's gap and noise (`Task.headroom`)

HEAD = "head"
STRATEGIES = ("linear", "finetune", "gradual")

MIN_PER_CLASS_TO_FINETUNE = 20
DEFAULT_AUTO_BUDGET_S = 15 * 60
AUTO_FINETUNE_EPOCHS = 5
MIN_EXAMPLES_SEEN = 20_000
MIN_HEADROOM = 0.01  # a probe at 99% validation accuracy or better is kept


@dataclass(frozen=True)
class Stage:
    """The groups that train in an epoch, each with its learning-rate multiplier; others are frozen."""

    lr_mults: dict[str, float] = field(default_factory=lambda: {HEAD: 1.0})

    def trains(self, group: str) -> bool:
        return group in self.lr_mults


StageFn = Callable[[int], Stage]


def discriminative_mults(groups: Sequence[str], lr_mult: float) -> dict[str, float]:
    """ULMFiT's discriminative rates: the head at 1, the earliest group at 1/lr_mult, geometric between."""
    ordered = [*groups, HEAD]
    if len(ordered) == 1:
        return {HEAD: 1.0}
    step = lr_mult ** (1.0 / (len(ordered) - 1))
    return {name: step ** -(len(ordered) - 1 - i) for i, name in enumerate(ordered)}


def linear(epoch: int, groups: Sequence[str]) -> Stage:
    """Frozen backbone (features can be cached): only the head trains."""
    return Stage({HEAD: 1.0})


def finetune(epoch: int, groups: Sequence[str], freeze_epochs: int = 1, lr_mult: float = 10.0) -> Stage:
    """fastai's fine_tune: the head alone for `freeze_epochs`, then everything, discriminatively."""
    if epoch < freeze_epochs:
        return Stage({HEAD: 1.0})
    return Stage(discriminative_mults(groups, lr_mult))


def gradual(epoch: int, groups: Sequence[str], lr_mult: float = 10.0) -> Stage:
    """ULMFiT gradual unfreezing: the head first, then one more group from the top each epoch."""
    mults = discriminative_mults(groups, lr_mult)
    unfrozen = set([HEAD, *list(groups)[::-1][:epoch]])
    return Stage({g: m for g, m in mults.items() if g in unfrozen})


def make_strategy(name: str, groups: Sequence[str], **options: float) -> StageFn:
    table: dict[str, Callable[..., Stage]] = {
        "linear": linear,
        "finetune": finetune,
        "gradual": gradual,
    }
    if name not in table:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return partial(table[name], groups=tuple(groups), **options)


def auto_epochs(n_train: int, default_epochs: int) -> int:
    """Epochs of fine-tuning that `auto` must be able to afford: the default, but on a large
    dataset one pass that sees MIN_EXAMPLES_SEEN examples is already worth more than a probe."""
    return max(1, min(default_epochs, math.ceil(MIN_EXAMPLES_SEEN / max(1, n_train))))


def feature_layers_kept(scores: dict[int, float], noise: float) -> int:
    """Of the probes on the body's last N layers (`scores`: N -> validation score), the fewest
    layers, unless more beat them by more than `noise` (one standard error of that score): a
    choice that wins by noise is not paid for with a wider head. Ties go to fewer layers."""
    fewest = min(scores)
    best = max(sorted(scores), key=lambda n: scores[n])  # the first (fewest) of equal scores
    return best if scores[best] > scores[fewest] + noise else fewest


def has_headroom(headroom: Headroom) -> tuple[bool, float]:
    """Whether the probe leaves room for a gain that this validation set can show: its gap to a
    perfect score (1 - accuracy, 1 - mAP, 1 - R2: the task's `headroom`) must exceed both
    MIN_HEADROOM and two standard errors of the score. Returns (room, the gap it had to exceed)."""
    needed = max(MIN_HEADROOM, 2 * headroom.standard_error)
    return headroom.gap > needed, needed


def choose_strategy(
    examples_per_class: float,
    finetune_epoch_seconds: float,
    budget_s: float | None,
    epochs: int = AUTO_FINETUNE_EPOCHS,
    headroom: Headroom | None = None,
    n_val: int = 0,
    probe_seconds: float | None = None,
    budget_label: str = "budget",
) -> tuple[str, str]:
    """`--strategy auto`: fine-tune when a gain over the linear probe is likely and there is the
    time to do it; otherwise the linear probe, which is seconds to minutes even on a laptop CPU.

    - Under MIN_PER_CLASS_TO_FINETUNE labelled examples per class, fine-tuning a whole network
      mostly overfits; linear probes on pretrained features are the stronger few-shot baseline
      (Kornblith et al. 2019; the few-shot literature's linear-probe baselines).
    - When the probe already ran (the modality's fine-tuning starts with one, LP-FT), its
      validation score must leave headroom (`has_headroom`, with the task's gap and noise: single-
      label's binomial accuracy, multi-label's mAP, regression's R2): fine-tuning gains most where
      frozen features fit the task worst (Kornblith et al. 2019, "Do Better ImageNet Models
      Transfer Better?"), and a gain smaller than the validation set's noise cannot be seen.
    - Fine-tuning must fit `epochs` epochs (`auto_epochs`) in the budget (what is left of
      --time-budget after the probe, else 15 minutes).

    The time is not weighed against the probe's: fine-tuning an epoch costs a forward and a
    backward pass per example where the probe's extraction costs one forward pass in all (often
    on a faster engine), so the ratio (22x to 40x on the CIFAR-10 subsets in docs/numbers.md;
    more when the probe's features came from the cache) is a property of the recipe and the
    machine, not of the dataset, and cannot tell where the extra time pays. What
    pays is in the data: its size and the probe's error. The reason states the ratio, and
    fine-tuning keeps the probe's model unless an epoch beats it on validation
    (`callbacks.KeepBest`), so the extra time does not lower validation accuracy.
    """
    budget = budget_s or DEFAULT_AUTO_BUDGET_S
    needed = epochs * finetune_epoch_seconds
    if examples_per_class < MIN_PER_CLASS_TO_FINETUNE:
        return "linear", (
            f"{examples_per_class:.0f} examples per class (< {MIN_PER_CLASS_TO_FINETUNE}): "
            "a linear probe on frozen features generalises better than fine-tuning"
        )
    probe, kept = _probe_room(headroom, n_val)
    if kept:
        return "linear", probe
    if needed > budget:
        return "linear", (
            f"{probe}fine-tuning needs about {needed:.0f}s for {epochs} epoch(s), "
            f"more than the {budget:.0f}s {budget_label}"
        )
    ratio = ""  # (a probe on cached features takes no time to speak of: no ratio then)
    if probe_seconds is not None and probe_seconds >= 1:
        ratio = f" ({_times(needed / probe_seconds)} the probe's {probe_seconds:.0f}s)"
    return "finetune", (
        f"{probe}{examples_per_class:.0f} examples per class and about {needed:.0f}s for "
        f"{epochs} epoch(s){ratio} fit the {budget:.0f}s {budget_label}"
    )


def _probe_room(headroom: Headroom | None, n_val: int) -> tuple[str, bool]:
    """What the probe's score says of fine-tuning (the start of the reason), and whether it keeps
    the probe: a score within `has_headroom`'s threshold of perfect leaves no gain to see."""
    if headroom is None:
        return "", False
    room, threshold = has_headroom(headroom)
    probe = f"the probe's {headroom.what} {headroom.gap:.1%} on {n_val} examples"
    if not room:
        return (
            f"{probe} is within {threshold:.1%} (the larger of {MIN_HEADROOM:.0%} and {headroom.noise}): "
            "fine-tuning could not show a gain, so the probe is kept"
        ), True
    return probe + f" leaves room (> {threshold:.1%}); ", False


def _times(ratio: float) -> str:
    """A ratio for people: 0.46x, 2.5x, 23x (never "0x")."""
    if ratio >= 10:
        return f"{ratio:.0f}x"
    return f"{ratio:.2g}x"
