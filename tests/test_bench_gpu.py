"""`bench/gpu.py --small` runs on a CPU and prints its one table (slow: a few minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / ".cache" / "data" / "cifar10"


@pytest.mark.slow
def test_gpu_bench_small_prints_one_table_on_a_cpu():
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"{CIFAR} is missing: unpack ../shared/data/cifar10-jpeg.tar.gz there")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--small", "--device", "cpu", "--skip", "text"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    rows = [line.split(" | ")[0].lstrip("| ") for line in table[2:]]
    assert rows == [
        "network alone: forward",
        "network alone: train step",
        "lever: train step, batch 64",
        "lever: train step, batch 128",
        "lever: train step, batch 256",
        "graft extraction (the probe)",
        "graft fine-tuning",
        "hand-written loop (anchor)",
    ]
