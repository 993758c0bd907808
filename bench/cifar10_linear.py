"""Linear probe on the full CIFAR-10 JPEG copy: accuracy, wall time, extraction speed, cache hit.

    python bench/cifar10_linear.py                     # every variant below
    python bench/cifar10_linear.py --only 96 96-lr3e-3 # some of them

Runs `graft train` as a user would (process start included) with GRAFT_CACHE_DIR=.cache/graft,
so a variant that shares a backbone/resolution with an earlier one shows the cache hit.
Unpack the data first:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
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
DATA = ROOT / ".cache" / "data" / "cifar10"

VARIANTS: dict[str, list[str]] = {
    "96": ["--image-size", "96"],
    "96-lr3e-3": ["--image-size", "96", "--lr", "3e-3"],  # second run: features from the cache
    "96-mlp": ["--image-size", "96", "--head", "mlp:1024", "--dropout", "0.5"],
    "96-flip": ["--image-size", "96", "--flip-features"],
    "128": ["--image-size", "128"],
    "160": ["--image-size", "160"],
    "160-lr3e-3": ["--image-size", "160", "--lr", "3e-3"],
    "224": [],  # the backbone's own resolution
}


def run_variant(name: str, extra: list[str]) -> dict:
    graft = Path(sys.executable).with_name("graft")
    out = ROOT / ".cache" / "runs" / f"cifar-{name}"
    cmd = [
        str(graft),
        "train",
        str(DATA / "train"),
        "--test",
        str(DATA / "test"),
        "--backbone",
        "efficientnet_lite0",
        "--strategy",
        "linear",
        "--out",
        str(out),
        "--json",
        *extra,
    ]
    env = {**os.environ, "GRAFT_CACHE_DIR": str(ROOT / ".cache" / "graft")}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - started
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((Path(out["run_dir"]) / "report.json").read_text())
    timing = report["timing"]
    n_images = report["data"]["train"] + report["data"]["val"] + report["data"]["test"]
    extract = timing["feature_extraction_seconds"]
    return {
        "variant": name,
        "args": " ".join(extra),
        "test_accuracy": out["test_accuracy"],
        "val_accuracy": out["accuracy"],
        "wall_seconds": round(wall, 1),
        "extract_seconds": round(extract, 1),
        "cache_hit": timing["feature_cache_hit"],
        "images_per_second": round(n_images / extract, 1) if extract else None,
        "head_seconds": round(timing["training_seconds"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / ".cache" / "bench" / "cifar10_linear.json"))
    args = parser.parse_args()
    rows = []
    print("| variant | args | test acc | wall s | extraction s | images/s | cache hit | head s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.only:
        r = run_variant(name, VARIANTS[name])
        rows.append(r)
        print(
            f"| {r['variant']} | `{r['args']}` | {r['test_accuracy']:.4f} | {r['wall_seconds']} | "
            f"{r['extract_seconds']} | {r['images_per_second']} | {r['cache_hit']} | {r['head_seconds']} |",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
