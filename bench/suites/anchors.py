"""graft's defaults against its own probe and the anchors, one run each (wall time of the whole
recipe, start-up included):

- cifar10: CIFAR-10 subsets (`--per-class`, 1,000 test images), the same packaged EfficientNet-Lite0,
  images, resolution and epochs in all: graft's defaults (auto), `--strategy linear`, fastai's
  `fine_tune` (a Python with fastai: `--fastai-python`), the Keras guide's recipe, the seed loop;
- trec6: graft's defaults and `--strategy linear` against a Hugging Face Trainer (3 epochs, 2e-5,
  batch 16) on the packaged MiniLM;
- seed_linear (only when named): `graft train --strategy linear` against the seed loop with its
  base frozen (`--frozen`), each `--epochs` epochs at batch 32 on the same `--per-class` subsets:
  `--only seed_linear --per-class 200 --image-size 128 --epochs 10` is the numbers page's row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.data import DATA, ROOT, TEXT, require_data, subset_folder
from bench.suites import Context

RECIPES = ("graft", "probe", "fastai", "keras", "seed")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--per-class", type=int, nargs="+", default=[10, 100, 500])
    group.add_argument("--test-per-class", type=int, default=100)
    group.add_argument("--image-size", type=int, default=96)
    group.add_argument("--epochs", type=int, default=5, help="every recipe's epochs in all (graft's default)")
    venv = ROOT / ".cache" / "anchors-venv" / "bin" / "python"
    group.add_argument("--fastai-python", type=Path, default=venv, help="a Python that has fastai")
    group.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    group.add_argument("--graft-budget", type=float, help="also graft's defaults with --time-budget SECONDS")
    group.add_argument("--seed", type=int, default=0)


def _graft(ctx: Context, name: str, args: list[str]) -> dict[str, Any]:
    run = ctx.graft(*args, "--json")
    if run.returncode:
        return {"row": name, "error": run.stderr.strip().splitlines()[-1:], **run.measures()}
    summary = run.last_json()
    return {"row": name, "test_accuracy": summary["test_accuracy"], "strategy": summary.get("strategy"),
            **run.measures()}  # fmt: skip


def _baselines(ctx: Context, train: Path, test: Path, per_class: int) -> list[dict[str, Any]]:
    from bench.baselines import run_fastai
    from bench.baselines.keras_guide import keras_run

    o, rows = ctx.options, []
    if "fastai" in o.recipes:
        fastai = run_fastai(train, test, o.image_size, o.epochs, o.fastai_python)
        rows.append({"row": "fastai fine_tune", **fastai})
    if "keras" in o.recipes:
        keras = keras_run(DATA, per_class, o.test_per_class, o.image_size, o.epochs)
        rows.append({"row": "Keras guide (graft.keras)", **keras})
    if "seed" in o.recipes:
        from bench.baselines.seed_recipe import run_seed_recipe

        started = time.perf_counter()
        seed = run_seed_recipe(train, test, epochs=o.epochs, image_size=o.image_size)
        rows.append({"row": "seed loop", "test_accuracy": seed["test_accuracy"],
                     "wall_seconds": time.perf_counter() - started})  # fmt: skip
    return rows


def _each_subset(ctx: Context, measure: Any) -> list[dict[str, Any]]:
    """`measure(train, test, per_class)`'s rows for each --per-class CIFAR-10 subset, labelled by it."""
    o = ctx.options
    require_data(DATA / "train", DATA / "test")
    test = subset_folder(DATA / "test", o.test_per_class, f"cifar10-test-{o.test_per_class}")
    rows: list[dict[str, Any]] = []
    for per_class in o.per_class:
        train = subset_folder(DATA / "train", per_class, f"cifar10-train-{per_class}")
        found = measure(train, test, per_class)
        rows += [{**r, "row": f"{per_class}/class: {r['row']}", "per_class": per_class} for r in found]
    return rows


def cifar10(ctx: Context) -> list[dict[str, Any]]:
    """CIFAR-10 subsets: graft's defaults and probe against fastai, Keras and the seed loop."""
    return _each_subset(ctx, lambda train, test, per_class: _recipes(ctx, train, test, per_class))


def _recipes(ctx: Context, train: Path, test: Path, per_class: int) -> list[dict[str, Any]]:
    """graft's rows (defaults, under a budget, the probe) and the baselines' on one subset."""
    o = ctx.options
    base = ["train", str(train), "--test", str(test), "--image-size", str(o.image_size)]
    found: list[dict[str, Any]] = []
    if "graft" in o.recipes:
        found.append(_graft(ctx, "graft defaults (auto)", base))
    if o.graft_budget:
        budget = [*base, "--time-budget", str(o.graft_budget)]
        found.append(_graft(ctx, f"graft defaults, --time-budget {o.graft_budget:.0f}s", budget))
    if "probe" in o.recipes:
        found.append(_graft(ctx, "graft probe (--strategy linear)", [*base, "--strategy", "linear"]))
    found += _baselines(ctx, train, test, per_class)
    return found


def trec6(ctx: Context) -> list[dict[str, Any]]:
    """TREC-6: graft's defaults and probe against a Hugging Face Trainer."""
    folder = TEXT / "trec6"
    base = ["train", str(folder / "train.csv"), "--test", str(folder / "test.csv")]
    rows = [_graft(ctx, "graft defaults (auto)", base)]
    rows.append(_graft(ctx, "graft probe (--strategy linear)", [*base, "--strategy", "linear"]))
    name = "transformers.Trainer, 3 epochs, 2e-5, batch 16"
    try:  # needs transformers' torch extra (accelerate): a missing one is a row, not a lost run
        from bench.baselines.hf_trainer import hf_trainer

        rows.append({"row": name, **hf_trainer(folder, ctx.options.seed)})
    except ImportError as err:
        rows.append({"row": name, "error": str(err)})
    return rows


def _seed_linear_pair(ctx: Context, train: Path, test: Path) -> list[dict[str, Any]]:
    from bench.baselines.seed_recipe import run_seed_recipe

    o = ctx.options
    args = ["train", str(train), "--test", str(test), "--strategy", "linear", "--seed", str(o.seed)]
    args += ["--image-size", str(o.image_size), "--epochs", str(o.epochs), "--batch-size", "32"]  # the loop's
    graft = _graft(ctx, "graft train --strategy linear", args)
    seed = run_seed_recipe(train, test, frozen=True, epochs=o.epochs, image_size=o.image_size, seed=o.seed)
    graft["speedup"] = seed["wall_seconds"] / graft["wall_s"]
    loop = {"row": "seed loop, frozen base", "test_accuracy": seed["test_accuracy"],
            "wall_seconds": seed["wall_seconds"]}  # fmt: skip
    return [loop, graft]


def seed_linear(ctx: Context) -> list[dict[str, Any]]:
    """The linear probe against the seed loop with a frozen base: test accuracy, wall seconds."""
    return _each_subset(ctx, lambda train, test, per_class: _seed_linear_pair(ctx, train, test))


DEFAULT_CASES = ("cifar10", "trec6")  # what a bare run runs
CASES = {"cifar10": cifar10, "trec6": trec6, "seed_linear": seed_linear}
