"""`graft lr-find DATA`: the learning-rate range test (Smith 2017; fastai's lr_find).

The LR grows exponentially from `start` to `end` over `steps` batches while the loss is recorded;
the suggestion is the LR where the smoothed loss falls fastest. With the linear strategy the test
runs on cached features (seconds); with finetune it runs the whole network on decoded images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import create_backbone
from .bundle import write_json
from .config import TrainConfig
from .data.memory import MemoryDataset, decode_all, train_transform
from .data.pipeline import normalize
from .data.sources import load_image_data
from .features import cached_features
from .heads import GraftModel, HeadSpec, build_head
from .train import autocast

Batch = tuple[torch.Tensor, torch.Tensor]


def lr_range_test(
    model: nn.Module, batches: Iterator[Batch], start: float = 1e-7, end: float = 10.0, steps: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """LRs and smoothed losses; stops early once the loss diverges (4x its minimum)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=start, weight_decay=0.0
    )
    factor = (end / start) ** (1 / max(1, steps - 1))
    lrs, losses, smooth, device = [], [], 0.0, next(model.parameters()).device
    model.train()
    for i, (x, y) in zip(range(steps), batches, strict=False):
        lr = start * factor**i
        for g in optimizer.param_groups:
            g["lr"] = lr
        with autocast(device):
            loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        smooth = 0.9 * smooth + 0.1 * float(loss.detach())
        lrs.append(lr)
        losses.append(smooth / (1 - 0.9 ** (i + 1)))  # bias-corrected exponential average
        if not np.isfinite(losses[-1]) or losses[-1] > 4 * min(losses):
            break
    model.load_state_dict(state)
    return np.array(lrs), np.array(losses)


def suggest_lr(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The LR of steepest descent of the loss against log-LR, ignoring the diverging tail."""
    if len(lrs) < 5:
        return float(lrs[int(np.argmin(losses))] / 10) if len(lrs) else 1e-3
    stop = int(np.argmin(losses)) + 1
    slopes = np.gradient(losses[:stop], np.log(lrs[:stop])) if stop > 2 else np.array([0.0])
    return float(lrs[int(np.argmin(slopes))])


def plot_lr_find(lrs: np.ndarray, losses: np.ndarray, suggestion: float, path: Path) -> None:
    from .metrics import _pyplot

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


def find_lr(config: TrainConfig, out: Path, steps: int = 100, log: Any = print) -> dict[str, Any]:
    from .data.text import is_text_data

    if is_text_data(config.data):
        raise ValueError("lr-find works on image data for now; text fine-tuning defaults to --lr 2e-4")
    backbone = create_backbone(config.backbone, weights=config.weights)
    splits = load_image_data(
        config.data, config.val, None, config.val_fraction, config.seed, config.data_root
    )
    prep = backbone.preprocessing.with_size(config.image_size)
    head = build_head(HeadSpec.parse(config.head, config.dropout), backbone.num_features, len(splits.classes))
    if config.strategy == "finetune":
        model: nn.Module = GraftModel(backbone.body, head)
        batch_size = config.batch_size or 64
        n = min(len(splits.train), steps * batch_size)
        images, failures = decode_all(splits.train.sources[:n], prep.resize_size)
        keep = [i for i in range(n) if i not in failures]
        data = MemoryDataset(
            [images[i] for i in keep], splits.train.labels[keep], train_transform(prep, "light")
        )
        x = normalize(torch.stack([data[i][0] for i in range(len(data))]), prep)
        y = torch.as_tensor(splits.train.labels[keep])
        with torch.no_grad():
            head[0].fit(backbone.body.eval()(x[:256]).flatten(1))
    else:
        feats = cached_features(backbone, splits.train.sources, prep, flip=config.flip_features)
        x, y = torch.from_numpy(feats.values[feats.ok]), torch.from_numpy(splits.train.labels[feats.ok])
        head[0].fit(x)
        model, batch_size = head, config.batch_size or 256
    lrs, losses = lr_range_test(model, _cycle(x, y, batch_size, config.seed), steps=steps)
    suggestion = suggest_lr(lrs, losses)
    out.mkdir(parents=True, exist_ok=True)
    plot_lr_find(lrs, losses, suggestion, out / "lr_find.png")
    result = {
        "suggested_lr": suggestion,
        "strategy": config.strategy,
        "plot": str(out / "lr_find.png"),
        "lrs": lrs.tolist(),
        "losses": losses.tolist(),
    }
    write_json(out / "lr_find.json", result)
    log(f"suggested learning rate {suggestion:.2e} (plot: {out / 'lr_find.png'})")
    return {k: v for k, v in result.items() if k not in {"lrs", "losses"}}  # the curve is in the file
