"""The numbers a refactor must not make worse, for one source tree: run it on the old and the new tree
in one sitting and compare.

    python bench/arch_numbers.py --label after                        # this checkout's src/
    python bench/arch_numbers.py --label before --src /tmp/before/src # a worktree of the old commit
    python bench/arch_numbers.py --table                              # both, as a markdown table

Four measurements, each one `graft` process as a user runs it (wall time includes process start):
- `graft demo --json` (digits, 10 labels per class);
- TREC-6 with default settings, seed 0 (train.csv -> test.csv);
- fine-tuning on the first 100 (train) / 50 (test) CIFAR-10 JPEGs per class at 96 px, `--epochs 1`
  and `--epochs 5` (graft's side of `bench/finetune.py --per-class 100 --test-per-class 50
  --graft-epochs 1 5`; the seed loop there is not graft code and does not change);
- the linear probe at 96 px on the first 500 images per class (test: the 10,000 test images'
  first 100 per class), cold feature cache.
`--src` goes first on PYTHONPATH, so the same venv runs either tree. Since d71090d `--epochs` counts
only the epochs after the probe: compare a tree before it at `--epochs N` with one after at N - 1.
Results: .cache/bench/arch-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seed_recipe import BENCH, DATA, ROOT, subset_folder

TEXT = ROOT.parent / "shared" / "data" / "text"


def graft(args: list[str], src: Path | None) -> tuple[dict, float]:
    env = dict(os.environ, GRAFT_CACHE_DIR=tempfile.mkdtemp(prefix="graft-cache-"))
    if src is not None:
        env["PYTHONPATH"] = str(src)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "graft.cli", *args, "--json"], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"graft {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def measure(src: Path | None, out_root: Path) -> dict[str, dict]:
    results: dict[str, dict] = {}
    demo, wall = graft(["demo", "--out", str(out_root / "demo")], src)
    results["demo"] = {
        "transfer": demo["transfer"]["accuracy"],
        "scratch": demo["scratch"]["accuracy"],
        "wall": wall,
    }
    print("demo", results["demo"], flush=True)
    trec = TEXT / "trec6"
    run, wall = graft(
        ["train", str(trec / "train.csv"), "--test", str(trec / "test.csv"), "--out", str(out_root / "trec")],
        src,
    )
    results["trec6"] = {"test_error": 1 - run["test_accuracy"], "wall": wall}
    print("trec6", results["trec6"], flush=True)
    train = subset_folder(DATA / "train", 100, "cifar10-train-100")
    test = subset_folder(DATA / "test", 50, "cifar10-test-50")
    for epochs in (1, 5):
        args = ["train", str(train), "--test", str(test), "--strategy", "finetune", "--image-size", "96"]
        run, wall = graft([*args, "--epochs", str(epochs), "--out", str(out_root / f"ft{epochs}")], src)
        results[f"finetune_{epochs}"] = {"test_accuracy": run["test_accuracy"], "wall": wall}
        print(f"finetune {epochs}", results[f"finetune_{epochs}"], flush=True)
    train = subset_folder(DATA / "train", 500, "cifar10-train-500")
    test = subset_folder(DATA / "test", 100, "cifar10-test-100")
    args = ["train", str(train), "--test", str(test), "--strategy", "linear", "--image-size", "96"]
    run, wall = graft([*args, "--out", str(out_root / "linear")], src)
    results["linear_96"] = {"test_accuracy": run["test_accuracy"], "wall": wall}
    print("linear 96", results["linear_96"], flush=True)
    return results


def table() -> None:
    rows = {label: json.loads((BENCH / f"arch-{label}.json").read_text()) for label in ("before", "after")}
    print("| measurement | before | after |")
    print("| --- | --- | --- |")
    b, a = rows["before"], rows["after"]

    def cell(r: dict, key: str, metric: str) -> str:
        return f"{r[key][metric]:.4f} in {r[key]['wall']:.0f} s"

    lines = [
        ("`graft demo`: transfer accuracy", "demo", "transfer"),
        ("TREC-6 default, seed 0: test error", "trec6", "test_error"),
        ("CIFAR-10 100/class finetune `--epochs 1`: test acc", "finetune_1", "test_accuracy"),
        ("CIFAR-10 100/class finetune `--epochs 5`: test acc", "finetune_5", "test_accuracy"),
        ("CIFAR-10 500/class linear 96 px: test acc", "linear_96", "test_accuracy"),
    ]
    for name, key, metric in lines:
        print(f"| {name} | {cell(b, key, metric)} | {cell(a, key, metric)} |")
    print(f"| `graft demo`: scratch accuracy | {b['demo']['scratch']:.4f} | {a['demo']['scratch']:.4f} |")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--src", type=Path, help="source tree to put first on PYTHONPATH (default: this one)")
    parser.add_argument("--table", action="store_true", help="print the before/after table and stop")
    args = parser.parse_args()
    if args.table:
        table()
        return
    out_root = ROOT / ".cache" / "runs" / f"arch-{args.label}"
    shutil.rmtree(out_root, ignore_errors=True)  # an earlier sitting's runs: graft refuses to replace them
    results = measure(args.src, out_root)
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / f"arch-{args.label}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
