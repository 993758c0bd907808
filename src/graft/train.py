"""The one training loop: AdamW, a one-cycle schedule computed per step, one autocast path.

Everything the loop needs arrives as arguments (no CLI namespace): the model, its named parameter
groups, a strategy (epoch -> Stage), a batch source and an evaluation function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpointer, LoopState
from .data.images import DataError
from .strategies import HEAD, Stage, StageFn

Batch = tuple[torch.Tensor, torch.Tensor]
ParamGroups = Sequence[tuple[str, Sequence[nn.Parameter]]]


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
    patience: int | None = None  # early stopping: epochs without a better validation accuracy
    cycle: str = "run"  # "run": one one-cycle over all epochs; "epoch": one per epoch (ULMFiT stages)


def one_cycle(progress: float, pct_start: float = 0.25) -> float:
    """LR factor in [0, 1]: cosine warm-up to 1 over `pct_start`, cosine annealing to ~0 after."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < pct_start:
        return 0.04 + 0.96 * (1 - math.cos(math.pi * progress / pct_start)) / 2
    rest = (progress - pct_start) / max(1e-8, 1 - pct_start)
    return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * rest)) / 2


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays only where the hardware has it (AVX512-BF16/AMX on CPU, Ampere+ on GPU);
    emulated bf16 is several times slower than fp32 on older CPUs."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    if bf16_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(groups: ParamGroups, cfg: LoopConfig) -> torch.optim.AdamW:
    """One AdamW group per named layer group; the loop sets each group's LR every step."""
    param_groups = []
    for name, params in groups:
        decay = [p for p in params if p.ndim > 1]  # no weight decay on norms and biases
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "weight_decay": wd, "name": name, "lr": cfg.lr})
    # not fused=True: 15-20% faster per step for a small text encoder on CPU, but with it a resumed
    # run no longer ended with bit-identical weights (tests/test_finetune.py); cause not found yet
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


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


def seconds_per_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> float:
    """Median seconds of a forward + backward pass on one real batch; the weights are restored."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model.train()
    timings = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with autocast(x.device):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        timings.append(time.perf_counter() - t)
    model.load_state_dict(state)
    return float(np.median(timings[1:]))  # the first step pays one-off allocation costs


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batches: Iterable[Batch],
    stage: Stage,
    lr_at: Callable[[int], float],
    state: LoopState,
    deadline: float | None,
) -> float:
    """One pass over the batches; returns the mean training loss."""
    device = next(model.parameters()).device
    loss_sum, seen = 0.0, 0
    for i, (x, y) in enumerate(batches):
        lr = lr_at(i)
        for g in optimizer.param_groups:
            g["lr"] = lr * stage.lr_mults.get(g["name"], 0.0)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        state.step += 1
        if deadline is not None and time.perf_counter() > deadline:
            break
    return loss_sum / max(1, seen)


def _no_progress(history: list[dict[str, Any]], patience: int | None) -> bool:
    """Early stopping: the validation accuracy has not improved for `patience` epochs."""
    if not patience or "val_accuracy" not in history[-1]:
        return False
    scores = [row["val_accuracy"] for row in history]
    return len(scores) - 1 - int(np.argmax(scores)) >= patience


def fit(
    model: nn.Module,
    groups: ParamGroups,
    strategy: StageFn,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    evaluate: Callable[[nn.Module], dict[str, float]],
    cfg: LoopConfig,
    log: Callable[[dict[str, Any]], None] = lambda row: None,
    checkpoint: Checkpointer | None = None,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Train for cfg.epochs; returns one history row per epoch (train loss, LR, validation metrics).

    Each epoch reseeds from (seed, epoch), so with a `checkpoint` the run resumes at the last
    finished epoch and ends with the same weights as an uninterrupted run. `deadline`
    (time.perf_counter() value) stops training cleanly after the step that crosses it."""
    device = next(model.parameters()).device
    optimizer = make_optimizer(groups, cfg)
    state = checkpoint.restore(model, optimizer) if checkpoint else LoopState()
    weight = torch.tensor(cfg.class_weights, device=device) if cfg.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    trained = {name for name, _ in groups}
    t0 = time.perf_counter()

    def run_progress() -> float:
        # under a deadline the one-cycle follows the clock, so the LR anneals exactly when time is up
        # whatever the real step cost; otherwise it follows the step count (exactly resumable)
        if deadline is not None:
            return (time.perf_counter() - t0) / max(deadline - t0, 1e-9)
        return state.step / total_steps

    for epoch in range(state.epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout, augmentation: a function of the epoch
        stage = strategy(epoch)
        apply_stage(model, groups, stage, cfg.bn_frozen)
        started = time.perf_counter()

        def lr_at(i: int) -> float:
            progress = i / steps_per_epoch if cfg.cycle == "epoch" else run_progress()
            return cfg.lr * one_cycle(progress, cfg.pct_start)

        train_loss = _train_epoch(model, optimizer, loss_fn, batches(epoch), stage, lr_at, state, deadline)
        row = {
            "epoch": epoch + 1,
            "stage": sorted(g for g in stage.lr_mults if g in trained),  # not the frozen groups
            "train_loss": train_loss,
            "lr": cfg.lr * one_cycle(run_progress(), cfg.pct_start),
            "train_seconds": time.perf_counter() - started,
            **evaluate(model),
        }
        state.history.append(row)
        state.epoch = epoch + 1
        log(row)
        if checkpoint:
            checkpoint.save(model, optimizer, state)
        if (deadline is not None and time.perf_counter() > deadline) or _no_progress(
            state.history, cfg.patience
        ):
            break
    return state.history


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  "
        f"val_f1 {row['val_macro_f1']:.4f}  ({row['train_seconds']:.2f}s)"
    )


def require_every_class(labels: Any, classes: Sequence[str]) -> None:
    """Training needs at least one readable image of every class."""
    missing = sorted(set(range(len(classes))) - {int(v) for v in labels})
    if missing:
        names = ", ".join(classes[i] for i in missing)
        raise DataError(f"no readable training images for class(es) {names}: add images or remove the folder")


def balanced_class_weights(labels: Any, num_classes: int) -> tuple[float, ...]:
    """scikit-learn's 'balanced' weights, n / (classes * count): each class weighs the same in the loss."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).float()
    weights = counts.sum() / (num_classes * counts.clamp_min(1))
    return tuple(float(w) for w in weights)
