"""The LR rule behind a GPU's larger fine-tuning batch (`graft/training/sizing.py`), measured where
it can be: accuracy does not depend on the device, so a CPU compares the rules on one subset.

    python bench/batch_lr_rule.py [--per-class 1000] [--image-size 64] [--epochs 2]

`graft train --strategy finetune` on CIFAR-10 (`--per-class` training images a class, 200 test
images a class), the same seed and epochs, four ways: batch 64 at the default LR (what a CPU
runs), and batch 256 with the LR unchanged, x2 (the square-root rule graft uses) and x4 (the
linear rule). One table, test accuracy and validation accuracy. Timings are not the point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_LR = 1e-3  # the image modality's fine-tuning LR (modalities/image.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT / ".cache" / "data" / "cifar10")
    args = parser.parse_args()
    from seed_recipe import subset_folder

    train = subset_folder(args.data / "train", args.per_class, f"lr-rule-train-{args.per_class}")
    test = subset_folder(args.data / "test", 200, "lr-rule-test-200")
    ways = [(64, 1.0, "batch 64, default LR (CPU)"), (256, 1.0, "batch 256, LR unchanged")]
    ways += [(256, 2.0, "batch 256, LR x2 (square-root rule)"), (256, 4.0, "batch 256, LR x4 (linear rule)")]
    print(f"CIFAR-10, {args.per_class} per class, {args.image_size} px, {args.epochs} fine-tuning epochs")
    print("| run | LR | test accuracy | validation accuracy |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as cache:
        for batch, factor, name in ways:
            out = Path(tempfile.mkdtemp(prefix="lr-rule-")) / "run"
            argv = [sys.executable, "-m", "graft", "train", str(train), "--test", str(test)]
            argv += ["--strategy", "finetune", "--epochs", str(args.epochs)]
            argv += ["--image-size", str(args.image_size), "--batch-size", str(batch)]
            argv += ["--lr", str(DEFAULT_LR * factor), "--out", str(out), "--json"]
            env = os.environ | {"GRAFT_CACHE_DIR": cache}
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            report = json.loads((out / "report.json").read_text())
            test_acc, val_acc = report["test"]["accuracy"], report["validation"]["accuracy"]
            print(f"| {name} | {DEFAULT_LR * factor:g} | {test_acc:.4f} | {val_acc:.4f} |", flush=True)


if __name__ == "__main__":
    main()
