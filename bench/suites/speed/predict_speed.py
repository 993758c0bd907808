"""`graft predict` speed, before and after: cold start for one image, and 100 photos, in one run.

    python -m bench speed --only predict_speed [--photos 100 --repeats 3] [--tree before=REV --tree after=.]

Every measurement is a fresh `python -m graft predict RUN ...` process, timed from process
start to exit (imports, bundle loading and verification, decoding, the network, printing): what a
user waits for. Rows:
  - --engine torch: the tree, PyTorch only;
  - --engine auto: the tree's default (ONNX Runtime for jobs of MIN_INPUTS_TO_EXPORT or more,
    exported once and cached; the cache is emptied before each timed process);
  - exported: the same run folder after `graft export RUN`, so `graft predict` answers
    from model.onnx without importing PyTorch.
The run is a linear probe at 224 px on 20 CIFAR-10 JPEGs per class (the predictions do not depend
on it); the photos are CIFAR-10 test JPEGs upscaled to 500 x 375 and saved at quality 90
(`bench.data.make_photos`). The median of --repeats processes is reported.
Unpack the data first:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from bench.data import BENCH, DATA, make_photos, require_data, subset_folder
from bench.suites import Context


def _median_seconds(ctx: Context, folder: Path, inputs: list[str], extra: list[str], cache: Path) -> float:
    times = []
    for _ in range(ctx.options.repeats):
        shutil.rmtree(cache / "engines", ignore_errors=True)  # every process exports afresh
        times.append(ctx.graft("predict", str(folder), *inputs, *extra, cache=cache).check().wall_s)
    return statistics.median(times)


def predict_speed(ctx: Context) -> list[dict[str, Any]]:
    """`graft predict`: cold start for one photo and N photos, torch / auto / exported."""
    require_data(DATA / "test", DATA / "train")
    tests = sorted(str(p) for p in (DATA / "test").glob("*/*.jpg"))
    n = ctx.options.photos
    photos = make_photos(tests[:: len(tests) // n][:n], BENCH / "photos500x375-predict")
    work, cache = ctx.work, ctx.work / "cache"
    shutil.rmtree(work / "run", ignore_errors=True), shutil.rmtree(work / "exported", ignore_errors=True)
    train = ["train", str(subset_folder(DATA / "train", 20, "cifar10-train-20")), "--strategy", "linear"]
    ctx.graft(*train, "--out", str(work / "run"), "--image-size", "224", "--json", cache=cache).check()
    shutil.copytree(work / "run", work / "exported")
    ctx.graft("export", str(work / "exported"), cache=cache).check()
    setups = {"--engine torch": (work / "run", ["--engine", "torch"]), "--engine auto": (work / "run", []),
              "exported (graft export RUN first)": (work / "exported", [])}  # fmt: skip
    rows = []
    for name, (folder, extra) in setups.items():
        one = _median_seconds(ctx, folder, photos[:1], extra, cache)
        many = _median_seconds(ctx, folder, photos, extra, cache)
        rows.append({"row": name, "cold_start_s": round(one, 2), "photos": len(photos),
                     "photos_s": round(many, 2), "images_per_s": round(len(photos) / many, 1)})  # fmt: skip
        print(f"| {name} | {one:.2f} | {many:.2f} | {len(photos) / many:.1f} |", flush=True)
    return rows
