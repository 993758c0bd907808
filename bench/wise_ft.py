"""Issue 27's levers side by side, one `graft train` process per row, on image and text datasets:
today's defaults (a source tree from before the levers, `--before`), the new tree's defaults
(`--interpolate off`: auto's stop when fine-tuning does not beat the probe, alone) and the new
tree with `--interpolate auto` (that stop and WiSE-FT weight interpolation). Test accuracy (or
the task's monitored metric), wall seconds with process start, what `auto` chose and what the model kept.

    git worktree add /tmp/before <commit before the levers>
    python bench/wise_ft.py --before /tmp/before [--only cifar10-100 catdog trec6 sst2-3k snli-3k cifar-multi]

Datasets (built once under .cache/bench/wise_ft from ../shared/data and .cache/data/cifar10):
- cifar10-100: CIFAR-10, 100 training images a class, 50 a class to test, 96 px.
- catdog: cats against dogs, 245 training and 153 more as validation (the closed photo case's
  sizes), 150 a class to test, 96 px.
- planefrog: airplanes against frogs, the same sizes: an easy pair, where the probe is hard to
  beat (the closed photo case: `auto` fine-tuned 4 epochs for nothing).
- cifar-multi: bench/tasks.py's multi-label CIFAR set (12 labels), mAP.
- trec6: TREC-6 (5,452 questions; its 500 test questions).
- sst2-3k: 3,000 SST-2 training sentences drawn with seed 0; its dev set (872) to test.
- snli-3k: 3,000 SNLI pairs drawn with seed 0 (`--text-column premise,hypothesis`); 2,000 of its
  test pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "text"
CIFAR = ROOT / ".cache" / "data" / "cifar10"
WORK = ROOT / ".cache" / "bench" / "wise_ft"
IMAGES = ["--image-size", "96"]


def _copy_images(split: str, classes: list[str], start: int, count: int, into: Path) -> None:
    for name in classes:
        files = sorted((CIFAR / split / name).iterdir())[start : start + count]
        (into / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, into / name / f.name)


def _image_set(name: str, classes: list[str], train: int, val: int, test: int) -> list[str]:
    root = WORK / name
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        _copy_images("train", classes, 0, train, root / "train")
        if val:
            _copy_images("train", classes, train, val, root / "val")
        _copy_images("test", classes, 0, test, root / "test")
        (root / "done").write_text("")
    argv = [str(root / "train"), "--test", str(root / "test"), *IMAGES]
    return argv + (["--val", str(root / "val")] if val else [])


def _multi_set(split: str) -> Path:
    """bench/tasks.py's cifar-multi folder of a split, built there on first use."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tasks import _cifar_table

    return _cifar_table("cifar-multi", split, 200 if split == "train" else 100, rotate=False)


def _table_sample(source: Path, target: Path, n: int) -> Path:
    if not target.is_file():
        with open(source, newline="") as f:
            reader = csv.DictReader(f)
            rows, fields = list(reader), reader.fieldnames
        random.Random(0).shuffle(rows)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows[:n])
    return target


def datasets() -> dict[str, list[str]]:
    cats = ["cat", "dog"]
    sst2 = _table_sample(TEXT / "sst2" / "train.csv", WORK / "sst2-3k" / "train.csv", 3000)
    snli = _table_sample(TEXT / "snli" / "train.csv", WORK / "snli-3k" / "train.csv", 3000)
    snli_test = _table_sample(TEXT / "snli" / "test.csv", WORK / "snli-3k" / "test.csv", 2000)
    classes = sorted(p.name for p in (CIFAR / "train").iterdir())
    return {
        "cifar10-100": lambda: _image_set("cifar10-100", classes, 100, 0, 50),
        "catdog": lambda: _image_set("catdog", cats, 123, 77, 150),
        "planefrog": lambda: _image_set("planefrog", ["airplane", "frog"], 123, 77, 150),
        "cifar-multi": lambda: [str(_multi_set("train")), "--test", str(_multi_set("test")),
                                "--label-column", "labels", *IMAGES],
        "trec6": lambda: [str(TEXT / "trec6" / "train.csv"), "--test", str(TEXT / "trec6" / "test.csv")],
        "sst2-3k": lambda: [str(sst2), "--test", str(TEXT / "sst2" / "dev.csv")],
        "snli-3k": lambda: [str(snli), "--test", str(snli_test), "--text-column", "premise,hypothesis"],
    }  # fmt: skip


def _run(src: Path, argv: list[str], out: Path) -> dict:
    """One `graft train` process with a cold cache of its own (no run reads another's features)."""
    cache = WORK / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src), "GRAFT_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "graft", "train", *argv, "--out", str(out), "--overwrite", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    monitor = (report.get("task") or {}).get("name", "single")
    key = {"single": "accuracy", "multi": "map", "regression": "r2"}[monitor]
    kept = report.get("kept") or {}
    mix = kept.get("interpolation") or {}
    epochs = [r["epoch"] for r in report["history"] if r["epoch"] > 0]
    return {
        "metric": key,
        "test": report["test"][key],
        "n_test": report["test"]["n"],
        "val": report["validation"][key],
        "seconds": time.perf_counter() - started,
        "strategy": report["strategy"],
        "epochs": len(epochs),
        "kept": kept.get("epoch"),
        "alpha": mix.get("alpha"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a worktree of the commit before the levers")
    parser.add_argument("--only", nargs="*", default=list(datasets()))
    args = parser.parse_args()
    variants = [
        ("today (before)", Path(args.before) / "src", []),
        ("new defaults (auto's stop alone)", ROOT / "src", ["--interpolate", "off"]),
        ("--interpolate auto (the stop and WiSE-FT)", ROOT / "src", ["--interpolate", "auto"]),
    ]
    rows = []
    for name in args.only:
        argv = datasets()[name]()
        for variant, src, extra in variants:
            row = {"dataset": name, "variant": variant, **_run(src, [*argv, *extra], WORK / "runs" / name)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| dataset | variant | test | val | strategy | epochs | kept | alpha | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        alpha = "" if r["alpha"] is None else f"{r['alpha']:g}"
        print(f"| {r['dataset']} | {r['variant']} | {r['metric']} {r['test']:.4f} | {r['val']:.4f} | "
              f"{r['strategy']} | {r['epochs']} | {r['kept']} | {alpha} | {r['seconds']:.0f} |")  # fmt: skip
    (WORK / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
