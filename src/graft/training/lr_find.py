"""`graft lr-find DATA`: the learning-rate range test (Smith 2017; fastai's lr_find).

The LR grows exponentially from `start` to `end` over `steps` batches while the loss is recorded
(the `LRFinder` callback on the one loop); the suggestion is the LR where the smoothed loss falls
fastest. With the linear strategy the test runs on cached features (seconds); with finetune it
runs the whole network on the modality's training batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bundle import write_json
from ..config import TrainConfig
from ..heads import GraftModel, HeadSpec, build_head
from ..options import LrFindOptions
from ..runtime.precision import use_precision
from .callbacks import LRFinder
from .features import cached_features
from .finetune import init_feature_norm
from .loop import Batch, LoopConfig, fit
from .strategies import Stage


def lr_range_test(
    model: nn.Module,
    batches: Iterator[Batch],
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = LrFindOptions.steps,
    bn_frozen: bool = False,
    loss_fn: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """LRs and smoothed losses; stops early once the loss diverges (4x its minimum). The weights
    are restored afterwards. `bn_frozen`: pretrained BatchNorm keeps its statistics, as --bn frozen
    trains."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    finder = LRFinder(start, end, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = LoopConfig(epochs=1, lr=start, weight_decay=0.0, bn_frozen=bn_frozen)
    fit(
        model,
        [("all", params)],
        lambda epoch: Stage({"all": 1.0}),
        lambda epoch: batches,
        steps,
        cfg,
        callbacks=[finder],
        loss_fn=loss_fn,
        schedule=finder.schedule,
    )
    model.load_state_dict(state)
    return np.array(finder.lrs), np.array(finder.losses)


def suggest_lr(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The LR of steepest descent of the loss against log-LR, ignoring the diverging tail."""
    if len(lrs) < 5:
        return float(lrs[int(np.argmin(losses))] / 10) if len(lrs) else 1e-3
    stop = int(np.argmin(losses)) + 1
    slopes = np.gradient(losses[:stop], np.log(lrs[:stop])) if stop > 2 else np.array([0.0])
    return float(lrs[int(np.argmin(slopes))])


def plot_lr_find(lrs: np.ndarray, losses: np.ndarray, suggestion: float, path: Path) -> None:
    from ..metrics import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cycle(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[Batch]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y) - batch_size + 1 if len(y) > batch_size else 1, batch_size):
            yield x[order[i : i + batch_size]], y[order[i : i + batch_size]]


def find_lr(
    config: TrainConfig, out: Path, steps: int = LrFindOptions.steps, log: Any = print
) -> dict[str, Any]:
    """The range test on what `graft train` would train, set up by the same `runner.prepare` (the
    config's and the data's checks, --weights, --device, --precision, --train-groups)."""
    from ..runner import freeze, prepare

    ready = prepare(config, log)
    freeze(config, ready.modality, ready.backbone, log)
    with use_precision(ready.precision):
        return _find_lr(config, ready, out, steps, log)


def _find_lr(config: TrainConfig, ready: Any, out: Path, steps: int, log: Any) -> dict[str, Any]:
    from ..runner import fitted_task

    modality, backbone, splits, prep = ready.modality, ready.backbone, ready.splits, ready.prep
    device = ready.device
    task = fitted_task(config, splits)
    head = build_head(HeadSpec.parse(config.head, config.dropout), backbone.num_features, task.outputs())
    strategy = "finetune" if config.strategy in ("finetune", "gradual") else "linear"
    batch_size = config.batch_size or modality.defaults.strategies[strategy].batch_size
    if strategy == "finetune":
        graft_model = GraftModel(backbone.body, head, mirror=modality.mirror)
        model: nn.Module = modality.prepare_model(graft_model, device)
        n = min(len(splits.train), steps * batch_size)
        train_set = modality.training_set(config, backbone, prep, splits.train.subset(np.arange(n)), [])
        init_feature_norm(model, train_set.plain_inputs(256, device))
        epoch_batches = train_set.batches(batch_size, config.seed, device)
        batches = itertools.chain.from_iterable(epoch_batches(e) for e in itertools.count())
    else:
        feats = cached_features(modality, backbone, splits.train.sources, prep, flip=config.flip_features)
        x = torch.from_numpy(feats.values[feats.ok]).to(device)
        y = torch.from_numpy(np.asarray(splits.train.labels)[feats.ok]).to(device)
        model = head.to(device)
        head.norm.fit(x)
        batches = _cycle(x, y, batch_size, config.seed)
    loss = task.loss(device, config.label_smoothing)
    lrs, losses = lr_range_test(model, batches, steps=steps, bn_frozen=config.bn == "frozen", loss_fn=loss)
    suggestion = suggest_lr(lrs, losses)
    out.mkdir(parents=True, exist_ok=True)
    plot_lr_find(lrs, losses, suggestion, out / "lr_find.png")
    result = {
        "suggested_lr": suggestion,
        "strategy": strategy,
        "plot": str(out / "lr_find.png"),
        "lrs": lrs.tolist(),
        "losses": losses.tolist(),
    }
    write_json(out / "lr_find.json", result)
    log(f"suggested learning rate {suggestion:.2e} (plot: {out / 'lr_find.png'})")
    return {k: v for k, v in result.items() if k not in {"lrs", "losses"}}  # the curve is in the file
