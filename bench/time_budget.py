"""Does --time-budget hold end to end? `graft train` on 5,000 images under a budget, timed from
outside (process start to exit, the bundle written), with what the run said about the budget.

    python bench/time_budget.py [--only cifar photos] [--cifar-budget 60] [--photos-budget 240]

- cifar: 5,000 CIFAR-10 training JPEGs (500 per class, 32 x 32, resized to the backbone's 224 px),
  `graft train DATA --time-budget 60` (defaults otherwise: `auto`).
- photos: the same 5,000 images upscaled to 500 x 375 JPEGs (photo-sized files: decoding costs
  what a user's photos cost), `--time-budget 240`.
Each run uses a fresh feature cache (GRAFT_CACHE_DIR), so extraction is really paid. Prints one
row per run: wall seconds against the budget, the strategy, the training subset the budget
allowed, validation accuracy, and the lines the run printed about the budget. Needs the data:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / ".cache" / "data" / "cifar10" / "train"
WORK = ROOT / ".cache" / "bench" / "time_budget"
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


def timed_run(name: str, data: Path, budget: float) -> dict:
    out = WORK / "runs" / name
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"GRAFT_CACHE_DIR": cache}
        argv = [sys.executable, "-m", "graft", "train", str(data), "--time-budget", str(budget)]
        argv += ["--out", str(out), "--overwrite", "--json"]
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: graft train failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    said = [line for line in done.stderr.splitlines() if "budget" in line]
    return {
        "run": name,
        "budget": budget,
        "wall_seconds": round(seconds, 1),
        "ratio": round(seconds / budget, 2),
        "strategy": report["strategy"],
        "precision": report["plan"]["precision"],
        "budget_subset": report["data"]["budget_subset"],
        "train": report["data"]["train"],
        "val_accuracy": report["validation"]["accuracy"],
        "said": said,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["cifar", "photos"], choices=["cifar", "photos"])
    parser.add_argument("--cifar-budget", type=float, default=60)
    parser.add_argument("--photos-budget", type=float, default=240)
    args = parser.parse_args()
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} is missing: unpack the CIFAR-10 JPEGs first (see this script's help)")
    rows = []
    if "cifar" in args.only:
        rows.append(timed_run("cifar-5000", cifar_subset(), args.cifar_budget))
    if "photos" in args.only:
        rows.append(timed_run("photos-5000", photos(), args.photos_budget))
    print("| run | budget | wall s | wall / budget | strategy | precision | trained on | val acc |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        sub = r["budget_subset"]
        trained = f"{sub['train']} of {sub['of']} (subset)" if sub else str(r["train"])
        print(
            f"| {r['run']} | {r['budget']:.0f} | {r['wall_seconds']} | {r['ratio']} | {r['strategy']} | "
            f"{r['precision']} | {trained} | {r['val_accuracy']:.4f} |"
        )
    for r in rows:
        print(f"\n{r['run']} said:")
        for line in r["said"]:
            print(f"  {line}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
