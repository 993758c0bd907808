"""The Keras transfer-learning guide's recipe (examples/keras_cifar10.py, through `graft.keras`):
1 frozen epoch, then the rest unfrozen at a low LR, on the first N images per class."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def keras_run(data: Path, per_class: int, test_per_class: int, size: int, epochs: int) -> dict[str, Any]:
    script = ROOT / "examples" / "keras_cifar10.py"
    started = time.perf_counter()
    cmd = [sys.executable, str(script), "--data", str(data), "--train-per-class", str(per_class),
           "--test-per-class", str(test_per_class), "--image-size", str(size), "--epochs", "1",
           "--finetune-epochs", str(max(1, epochs - 1)), "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": " ".join(done.stderr.strip().splitlines()[-3:])}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"test_accuracy": out["finetuned_test_accuracy"], "wall_seconds": time.perf_counter() - started}
