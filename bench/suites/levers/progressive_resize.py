"""Progressive resizing (fastai's lesson-1 trick, Howard 2018; also in FixRes and EfficientNetV2)
for graft's fine-tuning, side by side with the default in one run: the unfrozen epochs train on
random-resized crops that grow from 2/3 of the input size to all of it (`--resize progressive`),
and every evaluation is at the full size. Everything else is graft's default `finetune` (LP-FT).

    python -m bench levers --only progressive_resize [-- --per-class 100 --image-size 96]

Both runs use `--tta none`, so the comparison is of training alone rows go to the levers suite's
results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.data import BENCH, DATA, subset_folder
from bench.harness import emit
from graft.config import TrainConfig
from graft.modalities.image import progressive_sizes
from graft.runner import run


def one_run(name: str, train: Path, test: Path, size: int, out: Path, resize: str) -> dict[str, Any]:
    os.environ["GRAFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="graft-cache-")  # no run reuses another's
    config = TrainConfig(data=str(train), test=str(test), strategy="finetune", image_size=size,
                         tta="none", resize=resize, out=str(out / name), overwrite=True)  # fmt: skip
    started = time.perf_counter()
    result = run(config, log=lambda line: None)
    wall = time.perf_counter() - started
    report = json.loads((result.run_dir / "report.json").read_text())
    unfrozen = [row for row in report["history"] if row["epoch"] > 0]
    return {
        "test_accuracy": report["test"]["accuracy"],
        "val_curve": [row["val_accuracy"] for row in report["history"]],
        "kept_epoch": report["kept"]["epoch"],
        "fine_tuning_seconds": round(sum(row["train_seconds"] for row in unfrozen), 1),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=4, help="graft's unfrozen epochs (for the row's name)")
    args = parser.parse_args()
    train = subset_folder(DATA / "train", args.per_class, f"cifar10-train-{args.per_class}")
    test = subset_folder(DATA / "test", args.test_per_class, f"cifar10-test-{args.test_per_class}")
    out = BENCH / "runs" / "progressive"
    rows = {"default (full size every epoch)": one_run("full", train, test, args.image_size, out, "fixed")}
    schedule = progressive_sizes(args.image_size, args.epochs)
    rows[f"progressive {' -> '.join(map(str, schedule))}"] = one_run(
        "progressive", train, test, args.image_size, out, "progressive"
    )
    print(f"\nCIFAR-10, {args.per_class} per class, {args.image_size} px, fine-tuning\n")
    print("| training sizes | test accuracy | val accuracy by epoch | fine-tuning s | wall s |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        curve = " -> ".join(f"{v:.2f}" for v in row["val_curve"])
        print(f"| {name} | {row['test_accuracy']:.4f} | {curve} | {row['fine_tuning_seconds']:.0f} | "
              f"{row['wall_seconds']:.0f} |")  # fmt: skip
    sys.stdout.flush()
    emit(*({"row": name, "per_class": args.per_class, **row} for name, row in rows.items()))


if __name__ == "__main__":
    main()
