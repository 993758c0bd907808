"""Fine-tuning throughput on a device: `graft train --strategy finetune --device D` on CIFAR-10 JPEGs.

    python bench/device_finetune.py --device cuda                        # full train/test folders
    python bench/device_finetune.py --device cpu --per-class 100 --test-per-class 50 --epochs 2

One `graft train` process (wall time includes process start, decoding once, the probe phase and
evaluation). From its report.json: the head-only probe's extraction rate and, per fine-tuning
epoch, training images/s (images seen / the epoch's training seconds, evaluation excluded).
`--data DIR` points at a folder with train/ and test/ (default .cache/data/cifar10).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".cache" / "data" / "cifar10")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--per-class", type=int, help="first N training images per class (default: all)")
    parser.add_argument("--test-per-class", type=int, help="first N test images per class (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "runs" / "device-finetune")
    args = parser.parse_args()
    train, test = args.data / "train", args.data / "test"
    if args.per_class or args.test_per_class:
        from seed_recipe import subset_folder

        train = subset_folder(train, args.per_class, f"device-train-{args.per_class}")
        test = subset_folder(test, args.test_per_class, f"device-test-{args.test_per_class}")
    cmd = [
        sys.executable, "-m", "graft.cli", "train", str(train), "--test", str(test),
        "--strategy", "finetune", "--device", args.device, "--epochs", str(args.epochs),
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--out", str(args.out),
        "--json",
    ]  # fmt: skip
    env = dict(os.environ, GRAFT_CACHE_DIR=str(args.out.parent / "device-cache"))
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode:
        sys.exit(f"graft train failed ({done.returncode})")
    report = json.loads((args.out / "report.json").read_text())
    n_train = report["data"]["train"]
    print(f"device {report['device']}, {n_train} training images at {args.image_size} px, wall {wall:.0f} s")
    test, val = report["test"]["accuracy"], report["validation"]["accuracy"]
    print(f"test accuracy {test:.4f}, validation accuracy {val:.4f}")
    print("| phase | epoch | seconds | images/s | val acc |")
    print("| --- | --- | --- | --- | --- |")
    for row in report["history"]:
        if row["epoch"] == 0:
            extract = report["timing"]["feature_extraction_seconds"]
            rate = (n_train + report["data"]["val"]) / max(extract, 1e-9)
            print(f"| probe (extraction of train+val) | 0 | {row['train_seconds']:.1f} | {rate:.0f} "
                  f"| {row['val_accuracy']:.4f} |")
        else:
            batch = args.batch_size
            seen = (n_train // batch) * batch if n_train > batch else n_train
            rate = seen / max(row["train_seconds"], 1e-9)
            seconds, acc = row["train_seconds"], row["val_accuracy"]
            print(f"| fine-tuning | {row['epoch']} | {seconds:.1f} | {rate:.0f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
