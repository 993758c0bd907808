"""Linear probe on the full CIFAR-10 JPEG copy: accuracy, wall time, extraction speed, cache hit.

    python bench/cifar10_linear.py                     # every variant below
    python bench/cifar10_linear.py --only 96 96-lr3e-3 # some of them

Runs `graft train` as a user would (process start included). The feature cache is a fresh temporary
folder for each invocation (so the first variant of a size is a cold run, extraction included), shared
by the variants of that invocation: a variant that shares a backbone/resolution with an earlier one
shows the cache hit, e.g. `--only 160 160-lr3e-3`. `--cache-dir DIR` keeps the cache in DIR instead
(reruns then hit it: a "cold" variant that hits the cache is flagged in the table and the JSON).
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


def run_variant(name: str, extra: list[str], cache: Path) -> dict:
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
    env = {**os.environ, "GRAFT_CACHE_DIR": str(cache)}
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


def expects_hit(name: str, earlier: list[str]) -> bool:
    """Whether `name` reuses the features of a variant run before it in this invocation (same
    resolution, same extraction options)."""

    def extraction(variant: str) -> tuple[str, bool]:
        args = VARIANTS[variant]
        size = args[args.index("--image-size") + 1] if "--image-size" in args else "224"
        return size, "--flip-features" in args

    return any(extraction(e) == extraction(name) for e in earlier)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    parser.add_argument(
        "--cache-dir", help="feature cache to use and keep (default: a fresh temporary folder per invocation)"
    )
    parser.add_argument("--out", default=str(ROOT / ".cache" / "bench" / "cifar10_linear.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-cache-") as fresh:
        cache = Path(args.cache_dir) if args.cache_dir else Path(fresh)
        run_all(args.only, cache, Path(args.out), persistent=args.cache_dir is not None)


def run_all(names: list[str], cache: Path, out: Path, persistent: bool) -> None:
    rows = []
    print(f"feature cache: {cache}{' (kept)' if persistent else ' (fresh, removed at the end)'}")
    print("| variant | args | test acc | wall s | extraction s | images/s | cache hit | head s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, name in enumerate(names):
        r = run_variant(name, VARIANTS[name], cache)
        r["expected_cache_hit"] = expects_hit(name, names[:i])
        if r["cache_hit"] and not r["expected_cache_hit"]:
            r["warning"] = "meant as a cold run but hit a cache left by an earlier invocation"
            print(f"warning: {name}: {r['warning']}", flush=True)
        rows.append(r)
        print(
            f"| {r['variant']} | `{r['args']}` | {r['test_accuracy']:.4f} | {r['wall_seconds']} | "
            f"{r['extract_seconds']} | {r['images_per_second']} | {r['cache_hit']} | {r['head_seconds']} |",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
