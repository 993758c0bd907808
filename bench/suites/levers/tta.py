"""Evaluation-time levers on trained image bundles, side by side on the same test images:
test-time flip averaging, and evaluation at a higher resolution than training (FixRes, Touvron et
al. 2019: random-resized-crop shows objects larger in training than a centre crop does at test).

    python -m bench levers --only tta -- RUN_DIR [RUN_DIR ...] --test .cache/bench/subsets/cifar10-test-100
    python -m bench levers --only tta -- RUN_DIR --test TEST --scales 1.0 1.15 1.3 --crop-pcts 0.875 1.0

Each row is one bundle evaluated as it was trained (scale 1.0, its crop_pct, no flip) and with
each lever alone and combined; accuracy on every test image and seconds for the pass (PyTorch,
this machine's threads). The network, weights and images are the same in every row of a run.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import graft
from bench.harness import emit
from graft.data.images import scan_image_folder


def labelled_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The test folder's images and class names, read as graft reads image folders."""
    images, classes, _ = scan_image_folder(folder)
    return list(images.sources), [classes[i] for i in images.labels]


def evaluate(predictor: Any, base: Any, files: list[Path], labels: list[str], scale: float,
             crop_pct: float | None, flip: bool) -> dict[str, Any]:  # fmt: skip
    prep = replace(base, input_size=int(round(base.input_size * scale)), crop_pct=crop_pct or base.crop_pct)
    predictor.pipeline = predictor.modality.input_pipeline(prep)
    predictor.model.flip_average = flip
    started = time.perf_counter()
    predicted = predictor.predict(files, batch_size=128)
    seconds = time.perf_counter() - started
    accuracy = float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))
    return {"input_size": prep.input_size, "crop_pct": prep.crop_pct, "flip": flip,
            "test_accuracy": accuracy, "seconds": round(seconds, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--test", type=Path, required=True, help="a folder of class folders")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.15, 1.3])
    parser.add_argument("--crop-pcts", type=float, nargs="+", default=[0.0], help="0: the bundle's")
    args = parser.parse_args()
    files, labels = labelled_files(args.test)
    results: dict[str, list[dict[str, Any]]] = {}
    for run in args.runs:
        predictor = graft.load(run, engine="torch")
        trained_flip, base = predictor.model.flip_average, predictor.pipeline.prep
        rows = []
        for crop_pct in args.crop_pcts:
            for scale in args.scales:
                for flip in (False, True):
                    rows.append(evaluate(predictor, base, files, labels, scale, crop_pct or None, flip))
        results[str(run)] = rows
        print(f"\n{run} (trained at {base.input_size} px; flip-averaged as trained: {trained_flip})\n")
        print("| input size | crop_pct | flip | test accuracy | seconds |\n| --- | --- | --- | --- | --- |")
        for row in rows:
            print(f"| {row['input_size']} | {row['crop_pct']} | {row['flip']} | "
                  f"{row['test_accuracy']:.4f} | {row['seconds']:.1f} |")  # fmt: skip
        sys.stdout.flush()
    emit(*({"row": f"{run} {r['input_size']} px crop {r['crop_pct']} flip {r['flip']}", **r}
           for run, rows in results.items() for r in rows))


if __name__ == "__main__":
    main()
