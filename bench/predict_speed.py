"""`graft predict` speed, before and after: cold start for one image, and 100 photos, in one run.

    python bench/predict_speed.py [--before REV] [--photos 100] [--repeats 3]

Every measurement is a fresh `python -m graft.cli predict RUN ...` process, timed from process
start to exit (imports, bundle loading and verification, decoding, the network, printing): what a
user waits for. Rows:
  - before: graft at git revision --before (default a4f73d0, the last commit before the engine
    work), checked out into a temporary worktree and put first on PYTHONPATH;
  - after, --engine torch: this tree, PyTorch only;
  - after, --engine auto: this tree's default (ONNX Runtime for jobs of MIN_INPUTS_TO_EXPORT or more,
    exported once and cached; the cache is emptied before each timed process);
  - after, exported: the same run folder after `graft export RUN`, so `graft predict` answers
    from model.onnx without importing PyTorch.
The run is a linear probe at 224 px on 20 CIFAR-10 JPEGs per class (the predictions do not depend
on it); the photos are CIFAR-10 test JPEGs upscaled to 500 x 375 and saved at quality 90
(bench/throughput.py's `make_photos`). The median of --repeats processes is reported.
Unpack the data first:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import DATA, ROOT, make_photos

BENCH = ROOT / ".cache" / "bench"


def subset(per_class: int) -> Path:
    folder = BENCH / "subsets" / f"predict-speed-{per_class}"
    for class_dir in sorted((DATA / "train").iterdir()):
        target = folder / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for jpeg in sorted(class_dir.glob("*.jpg"))[:per_class]:
            link = target / jpeg.name
            if not link.exists():
                link.symlink_to(jpeg)
    return folder


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ... failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="a4f73d0", help="git revision of the 'before' rows")
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (DATA / "test").is_dir():
        raise SystemExit(f"no CIFAR-10 JPEGs under {DATA} (see the docstring)")
    work = Path(tempfile.mkdtemp(prefix="graft-predict-speed-"))
    before = work / "before"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
        check=True,
        capture_output=True,
    )
    try:
        tests = sorted(str(p) for p in (DATA / "test").glob("*/*.jpg"))
        photos = make_photos(
            tests[:: len(tests) // args.photos][: args.photos], BENCH / "photos500x375-predict"
        )
        run = work / "run"
        env = dict(os.environ, GRAFT_CACHE_DIR=str(work / "cache"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "graft.cli",
                "train",
                str(subset(20)),
                "--strategy",
                "linear",
                "--out",
                str(run),
                "--image-size",
                "224",
                "--json",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        exported = work / "exported"
        shutil.copytree(run, exported)
        subprocess.run(
            [sys.executable, "-m", "graft.cli", "export", str(exported)],
            env=env,
            check=True,
            capture_output=True,
        )
        setups = {
            f"before ({args.before})": (run, [], dict(env, PYTHONPATH=str(before / "src"))),
            "after, --engine torch": (run, ["--engine", "torch"], env),
            "after, --engine auto": (run, [], env),
            "after, exported (graft export RUN first)": (exported, [], env),
        }
        rows = []
        print(
            f"| setup | cold start, 1 photo: s | {len(photos)} photos: s | {len(photos)} photos: images/s |"
        )
        print("| --- | --- | --- | --- |")
        for name, (folder, extra, setup_env) in setups.items():
            cells = {}
            for label, inputs in (("one", photos[:1]), ("many", photos)):
                times = []
                for _ in range(args.repeats):
                    shutil.rmtree(
                        work / "cache" / "engines", ignore_errors=True
                    )  # every process exports afresh
                    argv = [sys.executable, "-m", "graft.cli", "predict", str(folder), *inputs, *extra]
                    times.append(timed(argv, setup_env))
                cells[label] = statistics.median(times)
            rows.append(
                {
                    "setup": name,
                    "cold_start_s": round(cells["one"], 2),
                    "photos_s": round(cells["many"], 2),
                    "images_per_s": round(len(photos) / cells["many"], 1),
                }
            )
            print(
                f"| {name} | {cells['one']:.2f} | {cells['many']:.2f} | {len(photos) / cells['many']:.1f} |",
                flush=True,
            )
        out = BENCH / "predict_speed.json"
        out.write_text(json.dumps({"photos": len(photos), "repeats": args.repeats, "rows": rows}, indent=2))
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
