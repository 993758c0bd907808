"""Speed: how fast graft's paths run on this machine, each case against the network's own limit or
the alternative beside it. Compare trees with `--tree before=REV --tree after=.`.

- throughput: extraction images/s by resolution beside the matmul roofline, and the large-photo table;
- extraction_levers: extraction by memory format and dtype (`-- --more`: the other levers);
- predict_speed: `graft predict` cold start and N photos, torch / auto / exported;
- export_latency: ONNX Runtime against PyTorch per item, with the export's parity;
- text_step_time: seconds per MiniLM fine-tuning step with the top N layer groups training;
- finetune_cpu: `graft train --strategy finetune` on a CIFAR-10 subset: the probe's extraction rate
  and each fine-tuning epoch's images/s, from report.json.
A script case takes its own options after `--` (e.g. `--only throughput -- --sizes 96 --seconds 2`).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from typing import Any

from bench.data import DATA, require_data, subset_folder
from bench.suites import Context, script_case
from bench.suites.speed.predict_speed import predict_speed


def items_per_second(forward: Callable[[], Any], items: int, seconds: float) -> float:
    """Items a second of `forward()` (one batch of `items`) repeated for `seconds`, after one warm-up
    call (one-off allocations and kernel selection); the caller sets its contexts."""
    forward()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        forward()
        n += items
    return n / (time.perf_counter() - started)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--photos", type=int, default=100, help="predict_speed: photos a call")
    group.add_argument("--repeats", type=int, default=3, help="predict_speed: processes a cell (median)")
    group.add_argument("--per-class", type=int, default=100, help="finetune_cpu: training images a class")
    group.add_argument("--epochs", type=int, default=2, help="finetune_cpu: fine-tuning epochs")
    group.add_argument("--image-size", type=int, default=96, help="finetune_cpu: input size")


def _epoch_rows(report: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    n_train = report["data"]["train"]
    rows = []
    for row in report["history"]:
        if row["epoch"] == 0:
            extract = report["timing"]["feature_extraction_seconds"]
            rate = (n_train + report["data"]["val"]) / max(extract, 1e-9)
            rows.append({"row": "probe (extraction of train+val)", "images_per_s": rate})
        else:
            seen = (n_train // batch) * batch if n_train > batch else n_train
            rate = seen / max(row["train_seconds"], 1e-9)
            rows.append({"row": f"fine-tuning epoch {row['epoch']}", "images_per_s": rate,
                         "val_accuracy": row["val_accuracy"]})  # fmt: skip
    return rows


def finetune_cpu(ctx: Context) -> list[dict[str, Any]]:
    """graft train --strategy finetune on the CPU: extraction and per-epoch images/s."""
    o = ctx.options
    require_data(DATA / "train", DATA / "test")
    train = subset_folder(DATA / "train", o.per_class, f"device-train-{o.per_class}")
    test = subset_folder(DATA / "test", 50, "device-test-50")
    out = ctx.work / "run"
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", str(train), "--test", str(test), "--strategy", "finetune", "--device", "cpu"]
    args += ["--epochs", str(o.epochs), "--image-size", str(o.image_size), "--batch-size", "64"]
    args += ["--out", str(out), "--json"]
    run = ctx.graft(*args).check()
    report = run.report or {}
    summary = {"test_accuracy": report["test"]["accuracy"], **run.measures()}
    return [{**row, **summary} for row in _epoch_rows(report, 64)]


CASES = {
    "throughput": script_case("bench.suites.speed.throughput"),
    "extraction_levers": script_case("bench.suites.speed.extraction_levers"),
    "predict_speed": predict_speed,
    "export_latency": script_case("bench.suites.speed.export_latency"),
    "text_step_time": script_case("bench.suites.speed.text_step_time"),
    "finetune_cpu": finetune_cpu,
}
