"""Peak memory of fine-tuning against the dataset's size: `graft train --strategy finetune` on
generated 500 x 375 JPEGs, peak RSS of the process tree, one table from one run.

    python bench/memory_scale.py [--sizes 5000 20000 100000] [--budget 300] [--graft PATH]

The photos are CIFAR-10 training JPEGs upscaled (bicubic) to 500 x 375 and saved at quality 90
(repeated when more are asked for than CIFAR-10 has, each copy a file of its own), 10 classes.
Each size runs `graft train DIR --strategy finetune --freeze-epochs 0 --time-budget BUDGET` (no
probe: every training image is decoded for fine-tuning, which is what held them all in RAM) with
a fresh GRAFT_CACHE_DIR, under `/usr/bin/time -v` (maximum resident set size). `--graft PATH`
runs another checkout's `src` (a worktree of an older commit) for the before/after table. Needs:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / ".cache" / "data" / "cifar10" / "train"
WORK = ROOT / ".cache" / "bench" / "memory_scale"


def photos(n: int) -> Path:
    """n photo-sized JPEGs in 10 class folders (made once, reused by later runs)."""
    from PIL import Image

    classes = sorted(p.name for p in CIFAR.iterdir())
    per_class = n // len(classes)
    folder = WORK / f"photos-{n}"
    for cls in classes:
        sources = sorted((CIFAR / cls).iterdir())
        target = folder / cls
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            out = target / f"{i:06d}.jpg"
            if not out.exists():
                image = Image.open(sources[i % len(sources)]).convert("RGB").resize((500, 375), Image.BICUBIC)
                if i >= len(sources):  # a copy: flipped, so the file differs
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
                image.save(out, quality=90)
    return folder


def peak_rss_mb(data: Path, budget: float, src: Path) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit code) of one graft train run."""
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        env = os.environ | {"GRAFT_CACHE_DIR": cache, "PYTHONPATH": str(src)}
        argv = ["/usr/bin/time", "-v", sys.executable, "-m", "graft", "train", str(data)]
        argv += ["--strategy", "finetune", "--freeze-epochs", "0", "--time-budget", str(budget)]
        argv += ["--out", str(Path(out) / "run")]
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    return (int(found.group(1)) / 1024 if found else float("nan")), seconds, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[5000, 20000, 100000])
    parser.add_argument("--budget", type=float, default=300)
    parser.add_argument("--graft", type=Path, default=ROOT, help="checkout whose src/ runs (default: this)")
    args = parser.parse_args()
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} is missing: unpack the CIFAR-10 JPEGs first (see this script's help)")
    src = args.graft.resolve() / "src"
    print(f"graft from {src}; --time-budget {args.budget:.0f}")
    print("| photos (500 x 375) | peak RSS MB | wall s | exit |")
    print("| --- | --- | --- | --- |")
    for n in args.sizes:
        rss, seconds, code = peak_rss_mb(photos(n), args.budget, src)
        print(f"| {n:,} | {rss:,.0f} | {seconds:.0f} | {code} |", flush=True)


if __name__ == "__main__":
    main()
