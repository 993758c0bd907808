"""Does --time-budget hold end to end? `graft train` on 5,000 images under a budget, timed from
outside (process start to exit, the bundle written), with what the run said about the budget.

    python -m bench budget [--only cifar photos] [--cifar-budget 60] [--photos-budget 240]

- cifar: 5,000 CIFAR-10 training JPEGs (500 per class, 32 x 32, resized to the backbone's 224 px),
  `graft train DATA --time-budget 60` (defaults otherwise: `auto`).
- photos: the same 5,000 images upscaled to 500 x 375 JPEGs (photo-sized files: decoding costs
  what a user's photos cost), `--time-budget 240`.
Each run uses a fresh feature cache (GRAFT_CACHE_DIR), so extraction is really paid. One
row per run: wall seconds against the budget, the strategy, the training subset the budget
allowed, validation accuracy, and the lines the run printed about the budget. Needs the data:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data import BENCH, DATA, require_data
from bench.suites import Context

CIFAR = DATA / "train"
WORK = BENCH / "time_budget"
PER_CLASS = 500


def _materialise(name: str, per_class: int, write: Callable[[Path, Path], None]) -> Path:
    """The first `per_class` JPEGs of every CIFAR-10 class, each written once by `write(src, dst)`."""
    folder = WORK / f"{name}-{per_class}"
    for cls in sorted(p.name for p in CIFAR.iterdir()):
        target = folder / cls
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted((CIFAR / cls).iterdir())[:per_class]:
            if not (target / src.name).exists():
                write(src, target / src.name)
    return folder


def cifar_subset(per_class: int = PER_CLASS) -> Path:
    """The images as they are, linked."""
    return _materialise("cifar", per_class, lambda src, dst: dst.symlink_to(src))


def photos(per_class: int = PER_CLASS, size: tuple[int, int] = (500, 375)) -> Path:
    """The images upscaled (bicubic) to 500 x 375 quality-90 JPEGs: photo-sized files."""
    from PIL import Image

    def upscale(src: Path, dst: Path) -> None:
        Image.open(src).convert("RGB").resize(size, Image.BICUBIC).save(dst, quality=90)

    return _materialise("photos", per_class, upscale)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--cifar-budget", type=float, default=60)
    group.add_argument("--photos-budget", type=float, default=240)


def timed_run(ctx: Context, data: Path, budget: float) -> dict[str, Any]:
    require_data(CIFAR)
    out = ctx.work / "run"
    args = ["train", str(data), "--time-budget", str(budget), "--out", str(out), "--overwrite", "--json"]
    run = ctx.graft(*args).check()
    report = run.report or {}
    return {
        "budget": budget,
        "ratio": round(run.wall_s / budget, 2),
        "strategy": report["strategy"],
        "precision": report["plan"]["precision"],
        "budget_subset": report["data"]["budget_subset"],
        "train": report["data"]["train"],
        "val_accuracy": report["validation"]["accuracy"],
        "said": [line for line in run.stderr.splitlines() if "budget" in line],
        **run.measures(),
    }


def cifar(ctx: Context) -> list[dict[str, Any]]:
    """5,000 CIFAR-10 JPEGs (32 px files) under --cifar-budget: wall against the budget."""
    return [timed_run(ctx, cifar_subset(), ctx.options.cifar_budget)]


def photo_sized(ctx: Context) -> list[dict[str, Any]]:
    """The same 5,000 images as 500 x 375 JPEGs under --photos-budget: wall against the budget."""
    return [timed_run(ctx, photos(), ctx.options.photos_budget)]


CASES = {"cifar": cifar, "photos": photo_sized}
