"""fastai's standard transfer recipe on graft's packaged backbone, as one JSON line (the anchors
suite runs it).

    <python with fastai> bench/baselines/fastai_fine_tune.py TRAIN_DIR TEST_DIR --image-size 96 --epochs 5

`Resize` + `aug_transforms()` + ImageNet-style normalisation with the backbone's own mean/std, the
concat-pool head of `create_head` on the backbone's feature map, `learn.fine_tune(epochs - 1)`
(one frozen epoch first, fastai's default), a 10% seeded validation split; then accuracy on TEST_DIR.
"""

from __future__ import annotations

import argparse
import json
import time

started = time.perf_counter()

import torch  # noqa: E402
from fastai.vision.all import (  # noqa: E402
    CrossEntropyLossFlat,
    ImageDataLoaders,
    Learner,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    create_head,
    get_image_files,
    params,
)
from torch import nn  # noqa: E402

from graft.backbones import create_backbone  # noqa: E402


class FeatureMap(nn.Module):
    """The backbone without its pooling: fastai's head pools (average and max, concatenated)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("train")
    parser.add_argument("test")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5, help="in all: 1 frozen + the rest unfrozen")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    backbone = create_backbone("efficientnet_lite0")
    prep = backbone.preprocessing
    dls = ImageDataLoaders.from_folder(
        args.train,
        valid_pct=0.1,
        seed=args.seed,
        item_tfms=Resize(args.image_size),
        batch_tfms=[
            *aug_transforms(size=args.image_size),
            Normalize.from_stats(list(prep.mean), list(prep.std)),
        ],
        bs=args.batch_size,
        num_workers=0,
    )
    model = nn.Sequential(FeatureMap(backbone.body), create_head(backbone.num_features, dls.c))
    learn = Learner(
        dls,
        model,
        loss_func=CrossEntropyLossFlat(),
        metrics=accuracy,
        splitter=lambda m: [params(m[0]), params(m[1])],
    )
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(max(1, args.epochs - 1), freeze_epochs=1)
        test_dl = learn.dls.test_dl(get_image_files(args.test), with_labels=True)
        preds, targets = learn.get_preds(dl=test_dl)
    test_accuracy = float((preds.argmax(1) == targets).float().mean())
    print(json.dumps({"test_accuracy": test_accuracy, "wall_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
