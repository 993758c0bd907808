"""The one optimisation loop: AdamW with one parameter group per named layer group, an LR schedule
computed per step, one device and one autocast path, and callbacks for everything else.

Everything the loop needs arrives as arguments: the model, its named parameter groups, a strategy
(epoch -> Stage), a batch source, a loss and callbacks. Evaluation, checkpoints, early stopping,
the deadline, progress, step timing and the LR range test are callbacks (training/callbacks.py);
masked-LM adaptation is another loss on this same loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..distributed.ddp import DataParallel
from ..runtime.device import cuda_tuning, host_waits_allowed, module_device, no_host_waits
from ..runtime.precision import autocast, autocast_dtype
from .strategies import HEAD, Stage, StageFn

Batch = tuple[torch.Tensor, torch.Tensor]
ParamGroups = Sequence[tuple[str, Sequence[nn.Parameter]]]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None  # per-class loss weights (imbalanced data)
    pct_start: float = 0.25  # share of steps spent warming up (one-cycle / slanted triangular)
    seed: int = 0
    bn_frozen: bool = True  # pretrained BatchNorm keeps its running statistics (eval mode)
    cycle: str = "run"  # "run": one one-cycle over all epochs; "epoch": one per epoch (ULMFiT stages)


@dataclass
class LoopState:
    """Where training stands: epochs completed, optimizer steps taken, history so far."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Callback:
    """Hooks into `fit`, called in list order. Set `loop.stop = True` to end training: after the
    current step the epoch ends (its end-of-epoch callbacks still run), then the fit."""

    def on_fit_start(self, loop: Loop) -> None: ...

    def on_step_end(self, loop: Loop, loss: torch.Tensor) -> None:
        """`loss`: the step's loss, a 0-d tensor on the device. Reading it (`float(loss)`) waits
        for the device, so only callbacks that need the value read it."""

    def on_epoch_end(self, loop: Loop, row: dict[str, Any]) -> None: ...

    def on_fit_end(self, loop: Loop) -> None: ...


@dataclass
class Loop:
    """What callbacks see: the model, its optimizer and the loop's state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: LoopConfig
    device: torch.device
    steps_per_epoch: int
    state: LoopState = field(default_factory=LoopState)
    stop: bool = False
    started: float = field(default_factory=time.perf_counter)
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling (checkpointed with the optimizer)
    # several processes under a clock schedule: (step, its reading) of rank 0's clock at the last agreement
    agreed_clock: tuple[int, float, float] | None = None


# schedule(loop, step within the epoch) -> the head's learning rate for the next step
Schedule = Callable[[Loop, int], float]


def one_cycle(progress: float, pct_start: float = 0.25) -> float:
    """LR factor in [0, 1]: cosine warm-up to 1 over `pct_start`, cosine annealing to ~0 after."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < pct_start:
        return 0.04 + 0.96 * (1 - math.cos(math.pi * progress / pct_start)) / 2
    rest = (progress - pct_start) / max(1e-8, 1 - pct_start)
    return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * rest)) / 2


def step_schedule(loop: Loop, i: int) -> float:
    """One-cycle over the run's steps (or over each epoch, for ULMFiT's stages): exactly resumable."""
    cfg = loop.cfg
    if cfg.cycle == "epoch":
        progress = i / loop.steps_per_epoch
    else:
        progress = loop.state.step / max(1, cfg.epochs * loop.steps_per_epoch)
    return cfg.lr * one_cycle(progress, cfg.pct_start)


class ClockSchedule:
    """One-cycle over wall time until `deadline` (a time.perf_counter() value): the LR anneals
    exactly when time is up, whatever a step really costs. Each step takes the LR of the moment it
    is expected to end (the mean step of this fit so far, or the timed `per_step` before the
    first), so the step that crosses the deadline runs annealed even when the time left is only
    a step or two. Several processes read rank 0's clock only when they agree on stopping
    (`Loop.agreed_clock`) and count steps from there, so they take the same LRs with no
    collective per step."""

    def __init__(self, deadline: float, per_step: float | None = None) -> None:
        self.deadline, self.per_step = deadline, per_step
        self.seen: dict[str, Any] = {}

    def reading(self, loop: Loop) -> tuple[float, float]:
        """This process's clock: (the share of the time to the deadline spent, a step's share)."""
        now = time.perf_counter()
        if self.seen.get("loop") is not loop:  # a new fit: count its steps from here
            self.seen.update(loop=loop, first_step=loop.state.step)
        taken = loop.state.step - self.seen["first_step"]
        step_seconds = (now - loop.started) / taken if taken else (self.per_step or 0.0)
        span = max(self.deadline - loop.started, 1e-9)
        return (now - loop.started) / span, step_seconds / span

    def __call__(self, loop: Loop, i: int) -> float:
        if loop.cfg.cycle == "epoch":
            return step_schedule(loop, i)
        if loop.agreed_clock is None:
            spent, step_share = self.reading(loop)
        else:
            at, spent, step_share = loop.agreed_clock
            spent += (loop.state.step - at) * step_share
        # whichever comes first, the deadline or the planned steps (an epoch cap set from a slow
        # timing ends training before the deadline): the LR has annealed when training stops
        steps = (loop.state.step + 1) / max(1, loop.cfg.epochs * loop.steps_per_epoch)  # this step's end
        return loop.cfg.lr * one_cycle(max(spent + step_share, steps), loop.cfg.pct_start)


def clock_schedule(deadline: float, per_step: float | None = None) -> Schedule:
    """The LR schedule of a time budget (`ClockSchedule`)."""
    return ClockSchedule(deadline, per_step)


def make_optimizer(
    groups: ParamGroups, cfg: LoopConfig, device: torch.device | None = None
) -> torch.optim.AdamW:
    """One AdamW group per named layer group; the loop sets each group's LR every step."""
    param_groups = []
    for name, params in groups:
        decay = [p for p in params if p.ndim > 1]  # no weight decay on norms and biases
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "weight_decay": wd, "name": name, "lr": cfg.lr})
    # fused on CUDA: one kernel for every parameter's update instead of several per tensor, PyTorch's
    # recommended path there. Not on the CPU: 15-20% faster per step for a small text encoder, but
    # with it a resumed run no longer ended with bit-identical weights (tests/test_finetune.py)
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups, lr=cfg.lr, **fused)


def apply_stage(model: nn.Module, groups: ParamGroups, stage: Stage, bn_frozen: bool = True) -> None:
    """Freeze the groups the stage leaves out. With `bn_frozen`, every pretrained BatchNorm layer
    (any group but the head) stays in eval mode, trained or not: it normalises with its pretrained
    running statistics while its scale and shift train with their group."""
    pretrained: set[int] = set()
    for name, params in groups:
        for p in params:
            p.requires_grad_(stage.trains(name))
            if name != HEAD:
                pretrained.add(id(p))
    model.train()
    if bn_frozen:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(
                id(p) in pretrained for p in module.parameters(recurse=False)
            ):
                module.eval()


def classification_loss(cfg: LoopConfig, device: torch.device) -> LossFn:
    weight = torch.tensor(cfg.class_weights, device=device) if cfg.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    return lambda model, x, y: criterion(model(x), y)


def fit(
    model: nn.Module,
    groups: ParamGroups,
    strategy: StageFn,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    cfg: LoopConfig,
    *,
    callbacks: Sequence[Callback] = (),
    loss_fn: LossFn | None = None,
    schedule: Schedule = step_schedule,
    data_parallel: bool = False,
) -> list[dict[str, Any]]:
    """Train for cfg.epochs on the model's device; returns one history row per epoch.

    Each epoch reseeds from (seed, epoch), so with a checkpoint callback a run resumes at the last
    finished epoch and ends with the same weights as an uninterrupted run.

    `data_parallel`, in a multi-process run: `batches` yields this process's part of each global
    batch, gradients are all-reduced (DataParallel) and the processes agree on the LR,
    on stopping and on the epoch's loss. Without it every process does the same work alone."""
    device = module_device(model)
    parallel = DataParallel(model, enabled=data_parallel)
    # fp16 needs loss scaling against underflow; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(device) == torch.float16)
    optimizer = make_optimizer(groups, cfg, device)
    loop = Loop(model, optimizer, cfg, device, max(1, steps_per_epoch), scaler=scaler)
    loss_fn = loss_fn or classification_loss(cfg, device)
    for cb in callbacks:
        cb.on_fit_start(loop)
    if parallel.active:  # once per fit: where rank 0's clock stands, for every process
        _agree(loop, parallel, schedule)
    with cuda_tuning(device):
        _epochs(loop, parallel, groups, strategy, batches, loss_fn, scaler, callbacks, schedule)
    parallel.close()
    for cb in callbacks:
        cb.on_fit_end(loop)
    return loop.state.history


def _epochs(
    loop: Loop,
    parallel: DataParallel,
    groups: ParamGroups,
    strategy: StageFn,
    batches: Callable[[int], Iterable[Batch]],
    loss_fn: LossFn,
    scaler: torch.amp.GradScaler,
    callbacks: Sequence[Callback],
    schedule: Schedule,
) -> None:
    """The epochs of `fit`. The host never waits for the device inside an epoch: the loss is summed
    on the device and read once at the epoch's end (a callback that reads a step's loss waits)."""
    model, cfg = loop.model, loop.cfg
    trained = {name for name, _ in groups}
    for epoch in range(loop.state.epoch, cfg.epochs):
        # dropout, augmentation: a function of the epoch (and of the process)
        torch.manual_seed(parallel.seed(cfg.seed * 1000 + epoch))
        stage = strategy(epoch)
        apply_stage(model, groups, stage, cfg.bn_frozen)
        started = time.perf_counter()
        with no_host_waits(loop.device):
            steps = _steps(loop, parallel, stage, batches(epoch), loss_fn, scaler, callbacks, schedule)
        loss_sum, seen, lr = steps
        total, seen = parallel.totals(float(loss_sum), seen)
        row = {
            "epoch": epoch + 1,
            "stage": sorted(g for g in stage.lr_mults if g in trained),  # not the frozen groups
            "train_loss": total / max(1, seen),
            "lr": lr,
            "train_seconds": time.perf_counter() - started,
        }
        loop.state.history.append(row)
        loop.state.epoch = epoch + 1
        for cb in callbacks:
            cb.on_epoch_end(loop, row)
        _agree(loop, parallel, schedule)
        if loop.stop:
            break


def _steps(
    loop: Loop,
    parallel: DataParallel,
    stage: Stage,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    scaler: torch.amp.GradScaler,
    callbacks: Sequence[Callback],
    schedule: Schedule,
) -> tuple[torch.Tensor, int, float]:
    """One epoch's optimizer steps: (the loss summed on the device, examples seen, the last LR)."""
    device, cfg = loop.device, loop.cfg
    trainer = parallel.wrap()  # the model, or DistributedDataParallel over what trains now
    loss_sum, seen, lr = torch.zeros((), device=device), 0, cfg.lr
    for i, (x, y) in enumerate(batches):
        lr = schedule(loop, i)  # the same in every process: no collective
        for g in loop.optimizer.param_groups:
            g["lr"] = lr * stage.lr_mults.get(g["name"], 0.0)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            loss = loss_fn(trainer, x, y)
        loop.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(loop.optimizer)
        scaler.update()
        value = loss.detach().float()
        loss_sum, seen = loss_sum + value * len(y), seen + len(y)
        loop.state.step += 1
        for cb in callbacks:
            cb.on_step_end(loop, value)
        if parallel.agrees_after(loop.state.step):
            _agree(loop, parallel, schedule)
            if loop.stop:
                break
    return loss_sum, seen, lr


def _agree(loop: Loop, parallel: DataParallel, schedule: Schedule) -> None:
    """The processes' agreement (a documented wait): a stop when any stops, and rank 0's clock
    for a clock schedule. Alone it costs nothing."""
    reading = schedule.reading(loop) if parallel.active and isinstance(schedule, ClockSchedule) else None
    with host_waits_allowed():
        loop.stop, clock = parallel.agree(loop.stop, reading)
    if clock is not None:
        loop.agreed_clock = (loop.state.step, clock[0], clock[1])
