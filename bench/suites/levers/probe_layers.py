"""Frozen features from more than the last layer, as a linear probe sees them: MiniLM's mean-pooled
last 1 / 2 / 4 hidden states concatenated, and EfficientNet-Lite0's pooled last stage alone or with
the pooled outputs of its last 1-3 blocks. One extraction a dataset; scikit-learn's logistic
regression on standardised features (C = 1) trained on the training split, scored on the test split.
No graft training loop: this says whether the features carry more, before any recipe is built on them.

    python -m bench levers --only probe_layers [-- --only trec6 ...]
    python -m bench.suites.levers.probe_layers [--only trec6 sst2-3k snli-3k catdog planefrog cifar10-100]

The datasets are bench/suites/levers/datasets.py's, built from ../shared/data on first use.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from bench.data import TEXT
from bench.harness import emit
from bench.suites.levers.datasets import WORK, datasets

TEXT_SETS = {
    "trec6": (TEXT / "trec6" / "train.csv", TEXT / "trec6" / "test.csv", ["text"]),
    "sst2-3k": (WORK / "sst2-3k" / "train.csv", TEXT / "sst2" / "dev.csv", ["text"]),
    "snli-3k": (WORK / "snli-3k" / "train.csv", WORK / "snli-3k" / "test.csv", ["premise", "hypothesis"]),
}
IMAGE_SETS = ["catdog", "planefrog", "cifar10-100"]


def _score(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    mean, std = train.mean(0), train.std(0) + 1e-6
    model = LogisticRegression(max_iter=3000, C=1.0).fit((train - mean) / std, y_train)
    return float(model.score((test - mean) / std, y_test))


@torch.inference_mode()
def _text_layers(backbone, rows: list[dict], columns: list[str]) -> np.ndarray:
    """(N, layers + 1, hidden): every hidden state (embeddings first), mean-pooled over the tokens."""
    out = []
    for start in range(0, len(rows), 64):
        batch = rows[start : start + 64]
        texts = [[r[c] for r in batch] for c in columns]
        enc = backbone.tokenizer(*texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        states = backbone.body.encoder(**enc, output_hidden_states=True).hidden_states
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.stack([(h * mask).sum(1) / mask.sum(1) for h in states], 1).numpy())
    return np.concatenate(out)


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def text_rows(name: str) -> list[dict]:
    from graft.backbones import create_backbone

    backbone = create_backbone("minilm")
    backbone.body.eval()
    train_path, test_path, columns = TEXT_SETS[name]
    train, test = _read(train_path), _read(test_path)
    started = time.perf_counter()
    x_train, x_test = _text_layers(backbone, train, columns), _text_layers(backbone, test, columns)
    seconds = time.perf_counter() - started
    y_train, y_test = np.array([r["label"] for r in train]), np.array([r["label"] for r in test])
    rows = []
    for last in (1, 2, 4):
        a, b = x_train[:, -last:].reshape(len(train), -1), x_test[:, -last:].reshape(len(test), -1)
        score = _score(a, y_train, b, y_test)
        rows.append({"dataset": name, "features": f"last {last} layer(s)", "test": score})
    print(f"{name}: extraction {seconds:.0f} s")
    return rows


@torch.inference_mode()
def _image_stages(model, paths: list[Path], size: int = 96) -> np.ndarray:
    """(N, 1280 + 320 + 192 + 112): the pooled last stage, then the pooled outputs of blocks -1, -2, -3."""
    from PIL import Image

    out = []
    for start in range(0, len(paths), 128):
        chunk = paths[start : start + 128]
        images = [Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC) for p in chunk]
        pixels = [(np.asarray(im, np.float32) / 255 - 0.5) / 0.5 for im in images]
        x = model.bn1(model.conv_stem(torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)))
        pooled = []
        for i, block in enumerate(model.blocks):
            x = block(x)
            if i >= len(model.blocks) - 3:
                pooled.append(x.mean((2, 3)))
        pooled.append(model.bn2(model.conv_head(x)).mean((2, 3)))
        out.append(torch.cat(pooled[::-1], 1).numpy())
    return np.concatenate(out)


def image_rows(name: str) -> list[dict]:
    from graft.backbones import create_backbone

    model = create_backbone("efficientnet_lite0").body.eval()
    split = {s: sorted((WORK / name / s).glob("*/*")) for s in ("train", "test")}
    x = {s: _image_stages(model, paths) for s, paths in split.items()}
    y = {s: np.array([p.parent.name for p in paths]) for s, paths in split.items()}
    widths = {"last stage (1280)": 1280, "+ block -1": 1600, "+ blocks -1, -2": 1792, "+ blocks -1..-3": 1904}
    scores = {
        label: _score(x["train"][:, :width], y["train"], x["test"][:, :width], y["test"])
        for label, width in widths.items()
    }
    return [{"dataset": name, "features": label, "test": score} for label, score in scores.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[*TEXT_SETS, *IMAGE_SETS])
    args = parser.parse_args()
    rows = []
    for name in args.only:
        datasets()[name]()  # built once under .cache/bench/wise_ft
        rows += text_rows(name) if name in TEXT_SETS else image_rows(name)
    print("| dataset | features | test accuracy |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['features']} | {r['test']:.4f} |")
    emit(*({**r, "row": f"{r['dataset']}: {r['features']}"} for r in rows))


if __name__ == "__main__":
    main()
