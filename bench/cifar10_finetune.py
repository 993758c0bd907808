"""Fine-tuning on the full CIFAR-10 JPEG copy within a time budget: test accuracy against wall time.

    python bench/cifar10_finetune.py --time-budget 3300            # the issue's 55-minute run
    python bench/cifar10_finetune.py --time-budget 1200 --image-size 96

Runs `graft train --strategy finetune` as a user would and prints the per-epoch validation
accuracy with the final test accuracy. Unpack the data first (see bench/cifar10_linear.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".cache" / "data" / "cifar10"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time-budget", default="3300")
    parser.add_argument("--image-size", default="96")
    parser.add_argument("--strategy", default="finetune")
    parser.add_argument("extra", nargs="*", help="more graft train arguments")
    args = parser.parse_args()
    out = ROOT / ".cache" / "runs" / f"cifar-{args.strategy}-{args.image_size}-{args.time_budget}"
    cmd = [
        str(Path(sys.executable).with_name("graft")),
        "train",
        str(DATA / "train"),
        "--test",
        str(DATA / "test"),
        "--strategy",
        args.strategy,
        "--time-budget",
        args.time_budget,
        "--image-size",
        args.image_size,
        "--out",
        str(out),
        "--json",
        *args.extra,
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    print("| epoch | stage groups | val acc | epoch s |")
    print("| --- | --- | --- | --- |")
    for row in report["history"]:
        print(
            f"| {row['epoch']} | {len(row['stage'])} | {row['val_accuracy']:.4f} "
            f"| {row['train_seconds']:.0f} |"
        )
    print(f"\ntest accuracy {result['test_accuracy']:.4f}, wall {wall:.0f}s (budget {args.time_budget}s)")
    (ROOT / ".cache" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / ".cache" / "bench" / f"{out.name}.json").write_text(
        json.dumps({"wall_seconds": wall, **result, "history": report["history"]}, indent=2)
    )


if __name__ == "__main__":
    main()
