"""Memory: peak RSS of graft's fine-tuning against the dataset's size, and the floor the network's
training step alone sets.

    python -m bench memory --only scale [--sizes 5000 20000 100000] [--budget 300]
    python -m bench memory --only step [--batch 64] [--size 224]

- scale: `graft train DIR --strategy finetune --freeze-epochs 0 --time-budget BUDGET` (no probe:
  every training image is decoded for fine-tuning) on generated 500 x 375 JPEGs (CIFAR-10 training
  JPEGs upscaled, bicubic, quality 90; repeated, flipped, when more are asked for), 10 classes; peak
  RSS of the process tree, a fresh GRAFT_CACHE_DIR.
- step: a process that only runs EfficientNet-Lite0 training steps (forward, backward, AdamW) on
  random batches at `--precision auto`'s arithmetic: the bound below which no data path can bring
  a run at that batch and size.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path
from typing import Any

from bench.data import BENCH, DATA, require_data
from bench.harness import emit, graft_runtime
from bench.suites import Context

CIFAR = DATA / "train"
WORK = BENCH / "memory_scale"


def add_arguments(group: Any) -> None:
    group.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 100000], help="scale: photos")
    group.add_argument("--budget", type=float, default=300, help="scale: --time-budget of each run")
    group.add_argument("--batch", type=int, default=64, help="step: the batch")
    group.add_argument("--size", type=int, default=224, help="step: the input size")
    group.add_argument("--steps", type=int, default=3, help="step: training steps")


def photos(n: int) -> Path:
    """n photo-sized JPEGs in 10 class folders (made once, reused by later runs)."""
    from PIL import Image

    classes = sorted(p.name for p in CIFAR.iterdir())
    per_class = n // len(classes)
    folder = WORK / f"photos-{n}"
    for cls in classes:
        sources = sorted((CIFAR / cls).iterdir())
        target = folder / cls
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            out = target / f"{i:06d}.jpg"
            if not out.exists():
                image = Image.open(sources[i % len(sources)]).convert("RGB").resize((500, 375), Image.BICUBIC)
                if i >= len(sources):  # a copy: flipped, so the file differs
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
                image.save(out, quality=90)
    return folder


def scale(ctx: Context) -> list[dict[str, Any]]:
    """Peak RSS of graft's fine-tuning on 5,000 to 100,000 photo-sized JPEGs."""
    require_data(CIFAR)
    rows = []
    for n in ctx.options.sizes:
        args = ["train", str(photos(n)), "--strategy", "finetune", "--freeze-epochs", "0"]
        args += ["--time-budget", str(ctx.options.budget), "--out", str(ctx.work / "run"), "--overwrite"]
        run = ctx.graft(*args)
        rows.append({"row": f"{n} photos", "photos": n, "rc": run.returncode, **run.measures()})
        print(f"| {n:,} | {run.peak_rss_mb:,.0f} MB | {run.wall_s:.0f} s | {run.returncode} |", flush=True)
    return rows


def step(ctx: Context) -> list[dict[str, Any]]:
    """Peak RSS of a process that runs only the network's training steps."""
    o = ctx.options
    args = ["--batch", str(o.batch), "--size", str(o.size), "--steps", str(o.steps)]
    run = ctx.module("bench.suites.memory", *args)
    return [{**row, **run.measures()} for row in run.rows] or [{"error": f"exit {run.returncode}"}]


CASES = {"scale": scale, "step": step}


def training_steps(batch: int, size: int, steps: int) -> dict[str, Any]:
    import torch

    from graft.backbones import create_backbone

    backbone = create_backbone("efficientnet_lite0")
    model = torch.nn.Sequential(backbone.body, torch.nn.Flatten(), torch.nn.Linear(backbone.num_features, 10))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters())
    device = torch.device("cpu")
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    precision = graft_runtime("resolve_precision")("auto", device)
    with graft_runtime("use_precision")(precision):
        for _ in range(steps):
            with graft_runtime("autocast")(device):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch {batch}, {size} px, {precision.name}: peak RSS {peak:,.0f} MB")
    return {"row": f"batch {batch}, {size} px", "precision": precision.name, "self_rss_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description="the network's training steps alone (the step case)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    emit(training_steps(args.batch, args.size, args.steps))


if __name__ == "__main__":
    main()
