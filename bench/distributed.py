"""One process against several on the same data: `graft train --devices N` (Accelerate, CPU processes
with gloo here), wall time and accuracy beside the single-process run.

    python bench/distributed.py                        # 50 images per class, 64 px, 1 vs 2 processes
    python bench/distributed.py --augment none         # no random augmentation: the runs' numbers agree
    python bench/distributed.py --devices 1 2 4 --per-class 100

Fine-tuning of the whole network (efficientnet_lite0, `--strategy finetune --freeze-epochs 0`) for
`--epochs` epochs on the first N images per class of the CIFAR-10 JPEG copy (a folder of symlinks
under .cache/bench/subsets/), tested on the first --test-per-class images per class of its test
folder. Each run is `graft train` in a subprocess with a cold feature cache, as a user runs it: wall
time includes starting the processes. `--batch-size` is the global batch, so every run takes the same
optimizer steps with the same learning rates; on a machine with fewer cores than processes x threads,
expect no speed-up: the point is the same accuracy.
Unpack the data first:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from linear_probe import run_graft
from seed_recipe import BENCH, DATA, require_data, subset_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA / "train"))
    parser.add_argument("--test", default=str(DATA / "test"))
    parser.add_argument("--per-class", type=int, default=50, help="first N training images per class")
    parser.add_argument("--test-per-class", type=int, default=50, help="first N test images per class")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="one run per value")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch of every run")
    parser.add_argument("--augment", default="light", help="none: no random augmentation, runs comparable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(BENCH / "distributed-{augment}.json"))
    args = parser.parse_args()
    data, test = Path(args.data), Path(args.test)
    require_data(data, test)
    train_dir = subset_folder(data, args.per_class, f"{data.parent.name}-{data.name}-{args.per_class}")
    test_dir = subset_folder(
        test, args.test_per_class, f"{test.parent.name}-{test.name}-{args.test_per_class}"
    )

    rows = []
    for devices in args.devices:
        out = BENCH / "runs" / f"distributed-{devices}-{args.augment}"
        run = run_graft(
            train_dir,
            test_dir,
            strategy="finetune",
            epochs=args.epochs,
            image_size=args.image_size,
            seed=args.seed,
            out=out,
            extra=[
                "--freeze-epochs",
                "0",
                "--batch-size",
                str(args.batch_size),
                "--devices",
                str(devices),
                "--device",
                "cpu",
                "--augment",
                args.augment,
                "--overwrite",
            ],
        )
        report = json.loads((out / "report.json").read_text())
        row = {
            "devices": devices,
            "distributed": report["distributed"],
            "wall_seconds": run["wall_seconds"],
            "training_seconds": round(report["timing"]["training_seconds"], 1),
            "val_accuracy": report["validation"]["accuracy"],
            "test_accuracy": report["test"]["accuracy"],
            "val_history": [round(r["val_accuracy"], 4) for r in report["history"]],
            "train_loss": [round(r["train_loss"], 4) for r in report["history"]],
            "command": run["command"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    n_val = report["data"]["val"]
    print(
        f"\nCIFAR-10, {args.per_class}/class, {args.image_size}px, fine-tuning {args.epochs} epochs, "
        f"global batch {args.batch_size}, --augment {args.augment}, {os.cpu_count()} cores; "
        f"test: {args.test_per_class}/class, val: {n_val} held out"
    )
    print("| processes | wall s | training s | val acc | test acc | train loss per epoch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        losses = " -> ".join(f"{x:.4f}" for x in r["train_loss"])
        print(
            f"| {r['devices']} ({r['distributed']['backend'] or 'alone'}) | {r['wall_seconds']:.0f} | "
            f"{r['training_seconds']:.0f} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {losses} |"
        )
    out = Path(args.out.format(augment=args.augment))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
