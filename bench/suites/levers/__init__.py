"""Levers side by side, one `graft train` process per dataset and tree, each with a cold cache: a
lever is a tree with a changed default or a flag the tree carries, e.g.

    python -m bench levers --only datasets --tree today=<rev> \\
        --tree "stop=.:--interpolate off" --tree "wise=.:--interpolate auto" --datasets trec6 catdog

Cases:
- datasets: test metric, validation metric, what `auto` chose and what the model kept (WiSE-FT's
  alpha) on the datasets of bench/suites/levers/datasets.py;
- tta: evaluation-time levers (flip averaging, a higher test resolution) on trained image bundles:
  `python -m bench levers --only tta -- RUN_DIR --test TEST_FOLDER`;
- probe_layers: frozen features from more than the last layer, scored by a logistic regression;
- progressive_resize: fine-tuning with growing crops against the default, in one run.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.suites import Context, script_case
from bench.suites.levers.datasets import datasets as lever_datasets

NAMES = ("cifar10-100", "catdog", "planefrog", "cifar-multi", "trec6", "sst2-3k", "snli-3k")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--datasets", nargs="+", choices=NAMES, default=list(NAMES))


def _result(report: dict[str, Any]) -> dict[str, Any]:
    monitor = (report.get("task") or {}).get("name", "single")
    key = {"single": "accuracy", "multi": "map", "regression": "r2"}[monitor]
    kept = report.get("kept") or {}
    epochs = [r["epoch"] for r in report["history"] if r["epoch"] > 0]
    return {"metric": key, "test": report["test"][key], "n_test": report["test"]["n"],
            "val": report["validation"][key], "strategy": report["strategy"], "epochs": len(epochs),
            "kept": kept.get("epoch"), "alpha": (kept.get("interpolation") or {}).get("alpha")}  # fmt: skip


def by_dataset(ctx: Context) -> list[dict[str, Any]]:
    """One graft train per dataset: test and validation metric, strategy, epochs, kept, alpha."""
    rows, builders = [], lever_datasets()
    for name in ctx.options.datasets:
        out = ctx.work / "runs" / name
        run = ctx.graft("train", *builders[name](), "--out", str(out), "--overwrite", "--json").check()
        rows.append({"row": name, **_result(run.report or {}), **run.measures()})
    return rows


CASES = {
    "datasets": by_dataset,
    "tta": script_case("bench.suites.levers.tta"),
    "probe_layers": script_case("bench.suites.levers.probe_layers"),
    "progressive_resize": script_case("bench.suites.levers.progressive_resize", "--per-class", "100"),
}
