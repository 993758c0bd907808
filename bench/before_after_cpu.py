"""CPU throughput of two source trees side by side, interleaved in one run: the probe's extraction
and each fine-tuning epoch, images/s (`bench/device_finetune.py` on the same CIFAR-10 subset).

    git worktree add /tmp/graft-before <commit>
    python bench/before_after_cpu.py --before /tmp/graft-before [--rounds 2]

Each run is `graft train --strategy finetune` on 100 images per class at 96 px (`--epochs 2`), a
fresh feature and decoded-image cache, the tree's own `src` first on PYTHONPATH; rounds alternate
before, after, before, after, so a slow moment of the machine hits both. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(src: Path) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="before-after-")) / "run"
    cmd = [sys.executable, str(ROOT / "bench" / "device_finetune.py"), "--device", "cpu"]
    cmd += ["--per-class", "100", "--test-per-class", "50", "--image-size", "96", "--epochs", "2"]
    cmd += ["--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    n_train, n_val = report["data"]["train"], report["data"]["val"]
    seen = (n_train // 64) * 64
    rates = {"extraction": (n_train + n_val) / report["timing"]["feature_extraction_seconds"]}
    for row in report["history"]:
        if row["epoch"] > 0:
            rates[f"epoch {row['epoch']}"] = seen / row["train_seconds"]
    rates["test accuracy"] = report["test"]["accuracy"]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a worktree of the older commit")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for r in range(1, args.rounds + 1):
        for name, tree in (("before", args.before.resolve()), ("after", ROOT)):
            rows.append((f"{name}, round {r}", one_run(tree / "src")))
            print(rows[-1], flush=True)
    print("| run | extraction img/s | fine-tuning epoch 1 img/s | epoch 2 img/s | test accuracy |")
    print("| --- | --- | --- | --- | --- |")
    for name, rates in rows:
        cells = [f"{rates['extraction']:.0f}", f"{rates['epoch 1']:.0f}", f"{rates['epoch 2']:.0f}"]
        print(f"| {name} | {' | '.join(cells)} | {rates['test accuracy']:.4f} |")


if __name__ == "__main__":
    main()
