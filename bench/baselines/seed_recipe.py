"""The "seed article" PyTorch transfer-learning recipe, as written: the baseline graft is measured against.

    python -m bench.baselines.seed_recipe --data .cache/data/cifar10/train --test .cache/data/cifar10/test \\
        --per-class 500 --test-per-class 100 --frozen          # frozen base: only the head trains
    python -m bench.baselines.seed_recipe ... --per-class 100 --test-per-class 50   # full fine-tuning

A pretrained backbone from graft's registry (default efficientnet_lite0, offline) with its classifier
replaced by `nn.Linear(num_features, num_classes)`; torchvision `ImageFolder` with Resize(resize_size),
CenterCrop(input_size), ToTensor, Normalize(mean, std) (the backbone's own values at --image-size, with
its interpolation); `DataLoader(batch_size=32, shuffle=True)`; `SGD(lr=0.001, momentum=0.9)`;
`CrossEntropyLoss`; the plain loop: `model.train()` every epoch, the backbone recomputed on every
batch of every epoch, fp32, default (NCHW) memory format, no inference_mode, no channels_last, no LR
schedule. `--frozen`: backbone parameters get requires_grad=False and the backbone stays in eval mode
(BatchNorm statistics fixed); the optimizer sees only the head. The test set is evaluated under
`torch.no_grad()` with `model.eval()`.

`--per-class N` keeps the first N images of each class (ImageFolder's sorted order); the other bench
scripts build the same subset as a folder of symlinks (`subset_folder`) so graft sees identical files.
Wall seconds run from building the backbone to the end of the test evaluation (the Python and torch
imports are not counted). `run_seed_recipe(...)` is the importable core (the anchors suite uses it);
with `eval_each_epoch` it also evaluates the test set after every epoch,
outside the training clock (`elapsed_seconds` counts training only).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from bench.data import BENCH, DATA, require_data
from graft.backbones import create_backbone


class SeedModel(nn.Module):
    """Pretrained body + a fresh linear head (the article's `model.fc = nn.Linear(...)`)."""

    def __init__(self, body: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def first_per_class(dataset: datasets.ImageFolder, per_class: int | None) -> datasets.ImageFolder | Subset:
    """The first `per_class` samples of each class, in ImageFolder's (sorted) order."""
    if not per_class:
        return dataset
    seen: dict[int, int] = {}
    keep = []
    for index, (_, label) in enumerate(dataset.samples):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(index)
    return Subset(dataset, keep)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            correct += int((model(inputs).argmax(1) == labels).sum())
            total += len(labels)
    return correct / max(total, 1)


def run_seed_recipe(
    data: str | Path,
    test: str | Path,
    *,
    frozen: bool = False,
    per_class: int | None = None,
    test_per_class: int | None = None,
    epochs: int = 10,
    image_size: int = 96,
    seed: int = 0,
    backbone: str = "efficientnet_lite0",
    batch_size: int = 32,
    lr: float = 0.001,
    momentum: float = 0.9,
    workers: int = 0,
    device: str | None = None,
    eval_each_epoch: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train with the seed recipe; returns per-epoch rows, the final test accuracy and the timings.

    Each row: epoch, epoch_seconds, elapsed_seconds (training clock, evaluation excluded), train_loss,
    train_accuracy, and test_accuracy when `eval_each_epoch`. `log` gets each row as it is done."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    dev = torch.device(device or default_device())
    bb = create_backbone(backbone)
    prep = bb.preprocessing.with_size(image_size)
    transform = transforms.Compose(
        [
            transforms.Resize(
                prep.resize_size, interpolation=transforms.InterpolationMode(prep.interpolation)
            ),
            transforms.CenterCrop(prep.input_size),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )
    train_folder = datasets.ImageFolder(str(data), transform=transform)
    test_folder = datasets.ImageFolder(str(test), transform=transform)
    if test_folder.classes != train_folder.classes:
        raise SystemExit(
            f"test classes {test_folder.classes} differ from train classes {train_folder.classes}"
        )
    train_set = first_per_class(train_folder, per_class)
    test_set = first_per_class(test_folder, test_per_class)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers)

    model = SeedModel(bb.body, bb.num_features, len(train_folder.classes)).to(dev)
    if frozen:
        for p in model.body.parameters():
            p.requires_grad = False
    params = model.head.parameters() if frozen else model.parameters()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    criterion = nn.CrossEntropyLoss()

    rows: list[dict[str, Any]] = []
    elapsed = eval_seconds = 0.0
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        if frozen:
            model.body.eval()
        loss_sum = 0.0
        correct = seen = 0
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(dev), labels.to(dev)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((outputs.argmax(1) == labels).sum())
            seen += len(labels)
        epoch_seconds = time.perf_counter() - epoch_started
        elapsed += epoch_seconds
        row: dict[str, Any] = {
            "epoch": epoch,
            "epoch_seconds": round(epoch_seconds, 2),
            "elapsed_seconds": round(elapsed, 2),
            "train_loss": round(loss_sum / max(seen, 1), 4),
            "train_accuracy": round(correct / max(seen, 1), 4),
        }
        if eval_each_epoch:
            eval_started = time.perf_counter()
            row["test_accuracy"] = round(evaluate(model, test_loader, dev), 4)
            eval_seconds += time.perf_counter() - eval_started
        rows.append(row)
        if log:
            log(row)

    if eval_each_epoch and rows:
        test_accuracy = rows[-1]["test_accuracy"]
    else:
        eval_started = time.perf_counter()
        test_accuracy = round(evaluate(model, test_loader, dev), 4)
        eval_seconds += time.perf_counter() - eval_started
    return {
        "recipe": "seed",
        "frozen": frozen,
        "backbone": backbone,
        "image_size": image_size,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "train_images": len(train_set),
        "test_images": len(test_set),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "seed": seed,
        "history": rows,
        "test_accuracy": test_accuracy,
        "train_seconds": round(elapsed, 2),
        "eval_seconds": round(eval_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def print_header(with_test: bool) -> None:
    cols = ["epoch", "epoch s", "elapsed s", "train loss", "train acc"] + (["test acc"] if with_test else [])
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols), flush=True)


def print_row(row: dict[str, Any]) -> None:
    cells = [
        row["epoch"],
        f"{row['epoch_seconds']:.1f}",
        f"{row['elapsed_seconds']:.1f}",
        f"{row['train_loss']:.4f}",
        f"{row['train_accuracy']:.4f}",
    ]
    if "test_accuracy" in row:
        cells.append(f"{row['test_accuracy']:.4f}")
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA / "train"), help="ImageFolder training folder")
    parser.add_argument("--test", default=str(DATA / "test"), help="ImageFolder test folder")
    parser.add_argument("--frozen", action="store_true", help="frozen base: only the new head trains")
    parser.add_argument("--per-class", type=int, help="first N training images of each class")
    parser.add_argument("--test-per-class", type=int, help="first N test images of each class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (the article's loop: 0)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--eval-each-epoch", action="store_true", help="test accuracy after every epoch")
    parser.add_argument("--out", help="JSON file (default .cache/bench/seed_recipe-<variant>-<size>.json)")
    args = parser.parse_args()
    require_data(Path(args.data), Path(args.test))
    print_header(args.eval_each_epoch)
    result = run_seed_recipe(
        args.data,
        args.test,
        frozen=args.frozen,
        per_class=args.per_class,
        test_per_class=args.test_per_class,
        epochs=args.epochs,
        image_size=args.image_size,
        seed=args.seed,
        backbone=args.backbone,
        workers=args.workers,
        device=args.device,
        eval_each_epoch=args.eval_each_epoch,
        log=print_row,
    )
    print(
        f"\n{'frozen base' if args.frozen else 'full fine-tuning'}, {result['train_images']} train / "
        f"{result['test_images']} test images, {args.image_size} px on {result['device']}: "
        f"test accuracy {result['test_accuracy']:.4f}, wall {result['wall_seconds']:.1f}s "
        f"(training {result['train_seconds']:.1f}s, evaluation {result['eval_seconds']:.1f}s)"
    )
    variant = "frozen" if args.frozen else "full"
    out = Path(args.out) if args.out else BENCH / f"seed_recipe-{variant}-{args.image_size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
