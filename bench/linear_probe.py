"""Frozen-base transfer: the seed recipe's loop (`--frozen`) against `graft train --strategy linear`.

    python bench/linear_probe.py                                  # 500 train / 100 test images per class
    python bench/linear_probe.py --per-class 100 --test-per-class 50 --image-size 128

Same backbone (efficientnet_lite0), resolution, epochs (10) and images on both sides: the first N
images per class of the CIFAR-10 JPEG copy, given to graft as a folder of symlinks under
.cache/bench/subsets/. graft runs as a user would, in a subprocess (process start, imports and
backbone loading count in its wall time), with a fresh GRAFT_CACHE_DIR so the feature cache is cold.
The seed loop runs in this process (its imports are not counted; building the backbone is). graft
holds 10% of the training folder out for validation (its default), so it trains on 90% of the images.
Issue target: graft >= 20x faster at equal or better test accuracy (within 1 point).
Unpack the data first:
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
from pathlib import Path
from typing import Any

from seed_recipe import BENCH, DATA, ROOT, require_data, run_seed_recipe, subset_folder


def run_graft(
    data: Path,
    test: Path,
    *,
    strategy: str,
    epochs: int | None,
    image_size: int,
    backbone: str = "efficientnet_lite0",
    seed: int = 0,
    out: Path,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """`graft train` in a subprocess with a cold feature cache; wall time includes process start."""
    cmd = [
        str(Path(sys.executable).with_name("graft")),
        "train",
        str(data),
        "--test",
        str(test),
        "--backbone",
        backbone,
        "--strategy",
        strategy,
        "--image-size",
        str(image_size),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--json",
        *(["--epochs", str(epochs)] if epochs is not None else []),
        *(extra or []),
    ]
    with tempfile.TemporaryDirectory(prefix="graft-cache-") as cache:
        env = {**os.environ, "GRAFT_CACHE_DIR": cache}
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"graft failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((Path(result["run_dir"]) / "report.json").read_text())
    return {
        "command": " ".join(cmd),
        "wall_seconds": round(wall, 2),
        "seconds": result["seconds"],
        "test_accuracy": result["test_accuracy"],
        "val_accuracy": result["accuracy"],
        "feature_cache_hit": result["feature_cache_hit"],
        "timing": report.get("timing"),
        "history": report.get("history"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA / "train"))
    parser.add_argument("--test", default=str(DATA / "test"))
    parser.add_argument("--per-class", type=int, default=500, help="first N training images per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="first N test images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--graft-batch-size",
        type=int,
        default=32,
        help="graft's --batch-size: the seed loop's 32, so that 10 epochs are the same number of updates "
        "(graft's own default, 256, with --epochs 10 gives a head only ~8 steps an epoch)",
    )
    parser.add_argument("--out", default=str(BENCH / "linear_probe.json"))
    args = parser.parse_args()
    data, test = Path(args.data), Path(args.test)
    require_data(data, test)
    train_dir = subset_folder(data, args.per_class, f"{data.parent.name}-{data.name}-{args.per_class}")
    test_dir = subset_folder(
        test, args.test_per_class, f"{test.parent.name}-{test.name}-{args.test_per_class}"
    )

    graft = run_graft(
        train_dir,
        test_dir,
        strategy="linear",
        epochs=args.epochs,
        image_size=args.image_size,
        backbone=args.backbone,
        seed=args.seed,
        out=ROOT / ".cache" / "runs" / f"bench-linear-probe-{args.per_class}-{args.image_size}",
        extra=["--batch-size", str(args.graft_batch_size)],
    )
    print(f"graft: test accuracy {graft['test_accuracy']:.4f}, wall {graft['wall_seconds']:.1f}s", flush=True)
    seed = run_seed_recipe(
        train_dir,
        test_dir,
        frozen=True,
        epochs=args.epochs,
        image_size=args.image_size,
        seed=args.seed,
        backbone=args.backbone,
        log=lambda r: print(f"seed loop epoch {r['epoch']}: {r['epoch_seconds']:.1f}s", flush=True),
    )
    speedup = seed["wall_seconds"] / graft["wall_seconds"]
    gap = graft["test_accuracy"] - seed["test_accuracy"]
    print(
        f"\n{seed['train_images']} train / {seed['test_images']} test images, {args.image_size} px, "
        f"{args.epochs} epochs, {args.backbone}\n"
    )
    print("| method | wall s | test acc | speed-up |")
    print("| --- | --- | --- | --- |")
    print(f"| seed loop, frozen base | {seed['wall_seconds']:.1f} | {seed['test_accuracy']:.4f} | 1.0x |")
    print(
        f"| `graft train --strategy linear` | {graft['wall_seconds']:.1f} | {graft['test_accuracy']:.4f} "
        f"| {speedup:.1f}x |"
    )
    met = speedup >= 20 and gap >= -0.01
    print(
        f"\ntarget (>= 20x at accuracy within 1 point): {'met' if met else 'not met'} "
        f"({speedup:.1f}x, accuracy {gap * 100:+.1f} points)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "per_class": args.per_class,
                "test_per_class": args.test_per_class,
                "image_size": args.image_size,
                "epochs": args.epochs,
                "speedup": round(speedup, 2),
                "accuracy_gap": round(gap, 4),
                "target_met": met,
                "graft": graft,
                "seed": seed,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
