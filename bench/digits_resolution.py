"""How input size and center-crop change the digits demo's transfer accuracy (frozen features +
logistic regression on 10 labels per class, the demo's fixed 500-image test split).

    python bench/digits_resolution.py

Used to choose the demo's 96 px (digits are 8x8; larger inputs cost time and gave no accuracy).
"""

from __future__ import annotations

import dataclasses
import time

from sklearn.linear_model import LogisticRegression

from graft.backbones import create_backbone
from graft.demo import digits_splits
from graft.modalities import get_modality

IMAGE = get_modality("image")


def main() -> None:
    splits = digits_splits(10, 0)
    backbone = create_backbone(IMAGE.default_backbone)
    print("| size | crop_pct | test accuracy | extraction s |")
    print("| --- | --- | --- | --- |")
    for size in (64, 96, 128, 160, 224):
        for crop in (0.875, 1.0):
            prep = dataclasses.replace(backbone.preprocessing, input_size=size, crop_pct=crop)
            started = time.perf_counter()
            train = IMAGE.encode(backbone, prep, splits.train.sources, flip=False, batch_size=64, desc="tr")
            test = IMAGE.encode(backbone, prep, splits.test.sources, flip=False, batch_size=64, desc="test")
            train, test = train.values, test.values
            seconds = time.perf_counter() - started
            mean, std = train.mean(0), train.std(0) + 1e-6
            clf = LogisticRegression(max_iter=2000, C=0.1).fit((train - mean) / std, splits.train.labels)
            accuracy = clf.score((test - mean) / std, splits.test.labels)
            print(f"| {size} | {crop} | {accuracy:.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
