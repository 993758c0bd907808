"""graft's defaults against its own probe and the anchors, one table per dataset, one run each.

    python bench/anchors.py images --per-class 10 100 500     # CIFAR-10 subsets, 1,000 test images
    python bench/anchors.py images --per-class 500 --only fastai --graft-budget 1800
    python bench/anchors.py trec6                              # TREC-6: graft vs a Hugging Face Trainer

Images (same packaged EfficientNet-Lite0, same images, same resolution, same epochs in all):
- `graft train DIR --test TEST --image-size S` (defaults: auto) and `--strategy linear` (its probe);
- fastai's `fine_tune` (bench/anchor_fastai.py, run with --fastai-python: a Python that has fastai;
  make one with `python -m venv .cache/anchors-venv`, a .pth file naming this venv's site-packages,
  and `.cache/anchors-venv/bin/pip install fastai`);
- the Keras transfer-learning guide's recipe through `graft.keras`, when that module exists;
- the seed article's loop (bench/seed_recipe.py).
Text: graft's defaults and `--strategy linear` against `transformers.Trainer` fine-tuning the same
MiniLM encoder (3 epochs, lr 2e-5, batch 16) on the same 90% of train.csv, tested on test.csv
(`pip install accelerate`: the Trainer needs it).
Every row is wall time of the whole recipe including its start-up. Results: .cache/bench/anchors-*.json.
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
from typing import Any

from seed_recipe import BENCH, DATA, ROOT, run_seed_recipe, subset_folder

TEXT = ROOT.parent / "shared" / "data" / "text"
FASTAI_PYTHON = ROOT / ".cache" / "anchors-venv" / "bin" / "python"


def graft_run(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, GRAFT_CACHE_DIR=tempfile.mkdtemp(prefix="graft-cache-"))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "graft.cli", *args, "--json"], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:], "wall_seconds": wall}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"test_accuracy": out["test_accuracy"], "wall_seconds": wall, "strategy": out.get("strategy")}


def fastai_run(train: Path, test: Path, size: int, epochs: int, python: Path) -> dict[str, Any]:
    if not python.is_file():
        return {"error": f"no fastai Python at {python}"}
    cmd = [str(python), str(Path(__file__).with_name("anchor_fastai.py")), str(train), str(test)]
    done = subprocess.run(
        [*cmd, "--image-size", str(size), "--epochs", str(epochs)], capture_output=True, text=True
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-3:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def keras_run(per_class: int, test_per_class: int, size: int, epochs: int) -> dict[str, Any]:
    """The Keras guide's recipe (examples/keras_cifar10.py): 1 frozen epoch, then the rest unfrozen
    at a low LR, on the same first-N-per-class images."""
    script = ROOT / "examples" / "keras_cifar10.py"
    started = time.perf_counter()
    cmd = [sys.executable, str(script), "--data", str(DATA), "--train-per-class", str(per_class),
           "--test-per-class", str(test_per_class), "--image-size", str(size), "--epochs", "1",
           "--finetune-epochs", str(max(1, epochs - 1)), "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-3:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"test_accuracy": out["finetuned_test_accuracy"], "wall_seconds": time.perf_counter() - started}


def images(args: argparse.Namespace) -> None:
    wanted = set(args.only or ("graft", "probe", "fastai", "keras", "seed"))
    if args.graft_budget:
        wanted.add("budget")
    test = subset_folder(DATA / "test", args.test_per_class, f"cifar10-test-{args.test_per_class}")
    for per_class in args.per_class:
        train = subset_folder(DATA / "train", per_class, f"cifar10-train-{per_class}")
        size = str(args.image_size)
        rows: dict[str, dict[str, Any]] = {}
        base = ["train", str(train), "--test", str(test), "--image-size", size]
        if "graft" in wanted:
            rows["graft defaults (auto)"] = graft_run(base)
        if "budget" in wanted:  # graft given the wall time the anchors take: `auto` under --time-budget
            rows[f"graft defaults, --time-budget {args.graft_budget:.0f}s"] = graft_run(
                [*base, "--time-budget", str(args.graft_budget)]
            )
        if "probe" in wanted:
            rows["graft probe (--strategy linear)"] = graft_run([*base, "--strategy", "linear"])
        if "fastai" in wanted:
            python = Path(args.fastai_python)
            rows["fastai fine_tune"] = fastai_run(train, test, args.image_size, args.epochs, python)
        if "keras" in wanted:
            rows["Keras guide (graft.keras)"] = keras_run(
                per_class, args.test_per_class, args.image_size, args.epochs
            )
        if "seed" in wanted:
            started = time.perf_counter()
            seed = run_seed_recipe(train, test, epochs=args.epochs, image_size=args.image_size)
            rows["seed loop"] = {
                "test_accuracy": seed["test_accuracy"],
                "wall_seconds": time.perf_counter() - started,
            }
        title = f"CIFAR-10, {per_class} per class, {args.test_per_class * 10} test images, {size} px"
        report(title, rows)
        save(f"anchors-cifar10-{per_class}-{size}-{'-'.join(sorted(wanted))}.json", rows)


def trec6(args: argparse.Namespace) -> None:
    folder = TEXT / "trec6"
    rows: dict[str, dict[str, Any]] = {}
    base = ["train", str(folder / "train.csv"), "--test", str(folder / "test.csv")]
    rows["graft defaults (auto)"] = graft_run(base)
    rows["graft probe (--strategy linear)"] = graft_run([*base, "--strategy", "linear"])
    try:  # needs transformers' torch extra (accelerate): a missing one is a row, not a lost run
        rows["transformers.Trainer, 3 epochs, 2e-5, batch 16"] = hf_trainer(folder, args.seed)
    except ImportError as err:
        rows["transformers.Trainer, 3 epochs, 2e-5, batch 16"] = {"error": [str(err)]}
    report("TREC-6 (train.csv, 10% held out; test.csv)", rows)
    save("anchors-trec6.json", rows)


def hf_trainer(folder: Path, seed: int, epochs: int = 3, use_cpu: bool = True) -> dict[str, Any]:
    """A plain Hugging Face fine-tune of the packaged MiniLM: the usual Trainer recipe (bf16 where
    the device has it, off the CPU)."""
    started = time.perf_counter()
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from graft.backbones._text import packaged_minilm_folder
    from graft.data.splits import stratified_split
    from graft.data.text import read_text_data

    train_table = read_text_data(folder / "train.csv", ["text"], "label")
    test_table = read_text_data(folder / "test.csv", ["text"], "label")
    classes = sorted(set(train_table.labels))
    labels = np.array([classes.index(label) for label in train_table.labels])
    train_idx, _ = stratified_split(labels, 0.1, seed, "trec6")
    model_dir = str(packaged_minilm_folder())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(classes))

    class Texts(torch.utils.data.Dataset):
        def __init__(self, texts: list[str], ys: list[int]) -> None:
            self.enc = tokenizer(texts, truncation=True, max_length=128)
            self.ys = ys

        def __len__(self) -> int:
            return len(self.ys)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.ys[i]}

    train_set = Texts([train_table.texts[i] for i in train_idx], labels[train_idx].tolist())
    test_set = Texts(test_table.texts, [classes.index(label) for label in test_table.labels])
    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-trainer-"), num_train_epochs=epochs, learning_rate=2e-5,
        per_device_train_batch_size=16, per_device_eval_batch_size=64, seed=seed, report_to=[],
        save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=use_cpu,
        bf16=not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )  # fmt: skip
    trainer = Trainer(model=model, args=training, train_dataset=train_set, processing_class=tokenizer)
    trainer.train()
    predictions = trainer.predict(test_set)
    accuracy = float((predictions.predictions.argmax(1) == np.array(test_set.ys)).mean())
    return {"test_accuracy": accuracy, "wall_seconds": time.perf_counter() - started}


def report(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}\n\n| recipe | test accuracy | wall s |\n| --- | --- | --- |")
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | not run: {' '.join(map(str, row['error']))[:120]} | |")
        else:
            print(f"| {name} | {row['test_accuracy']:.4f} | {row['wall_seconds']:.0f} |")
    sys.stdout.flush()


def save(name: str, rows: dict[str, dict[str, Any]]) -> None:
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / name).write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("images")
    p.add_argument("--per-class", type=int, nargs="+", default=[10, 100, 500])
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=5, help="every recipe's epochs in all (graft's default: 5)")
    p.add_argument("--fastai-python", default=str(FASTAI_PYTHON))
    p.add_argument("--only", nargs="+", help="run only these recipes: graft, probe, fastai, keras, seed")
    p.add_argument("--graft-budget", type=float, help="also graft's defaults with --time-budget "
                   "SECONDS (auto keeps the probe when fine-tuning needs more than 15 minutes)")  # fmt: skip
    p = sub.add_parser("trec6")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images(args) if args.what == "images" else trec6(args)


if __name__ == "__main__":
    main()
