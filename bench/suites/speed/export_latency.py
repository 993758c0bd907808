"""ONNX export: the parity figure and per-item latency of onnxruntime vs PyTorch on this CPU.

    python -m bench speed --only export_latency                # trains the two small runs it needs
    python -m bench speed --only export_latency -- --image-run runs/a --text-run runs/b --repeats 50

Without --image-run / --text-run it trains (once, under .cache/bench/export/): an image linear probe
of the packaged EfficientNet-Lite0 at its native 224 px on 200 CIFAR-10 JPEGs (the first 20 per
class), and a text linear probe of the packaged MiniLM on the first 600 questions of TREC-6
(../shared/data/text/trec6; max_length from the data). Each run is exported with `graft export`'s
code (parity check on up to 32 of its validation inputs), then timed:

- the network alone: inputs already prepared as graft's pipeline gives them (float32 channels_last
  images, padded token ids and their mask), probabilities out; fp32 on both sides;
- PyTorch under inference_mode with its default threads vs onnxruntime's CPU provider with its
  default threads; median of --repeats timed calls after 3 warm-up calls, divided by the batch size;
- batch 32: 32 validation inputs of the run (repeated when it has fewer; texts padded to the longest
  of them); batch 1: the first of them.

Rows go to the speed suite's results and a markdown table to stdout, with the load average: on a
shared machine, busy cores slow multi-threaded PyTorch far more than one thread
(`--threads 1` measures each runtime on one core).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import BENCH, DATA, TEXT, require_data, subset_folder
from bench.harness import emit
from graft.config import TrainConfig
from graft.export import export
from graft.export import onnx as graft_onnx
from graft.predict import load
from graft.runner import run

TREC = TEXT / "trec6" / "train.csv"
OUT = BENCH / "export"
WARMUP = 3
HEADER = (
    "| model | parity (max abs diff, samples) | batch | PyTorch ms/item | onnxruntime ms/item | speed-up |"
)


def image_run() -> Path:
    run_dir = OUT / "image-224"
    if not (run_dir / "graft.json").is_file():
        require_data(DATA / "train")
        data = subset_folder(DATA / "train", 20, "cifar10-train-20")
        run(TrainConfig(data=str(data), strategy="linear", out=str(run_dir)), log=print)
    return run_dir


def text_run() -> Path:
    run_dir = OUT / "text-trec6-600"
    if not (run_dir / "graft.json").is_file():
        if not TREC.is_file():
            sys.exit(f"{TREC} is missing: the text datasets live in ../shared/data/text")
        subset = OUT / "trec6-600.csv"
        with open(TREC, newline="") as src:
            rows = list(csv.reader(src))[:601]  # header + 600 questions
        subset.parent.mkdir(parents=True, exist_ok=True)
        with open(subset, "w", newline="") as dst:
            csv.writer(dst).writerows(rows)
        run(TrainConfig(data=str(subset), strategy="linear", out=str(run_dir)), log=print)
    return run_dir


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def onnx_session(onnx_file: Path, threads: int | None) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def latency(run_dir: Path, onnx_file: Path, repeats: int, threads: int | None) -> list[dict[str, Any]]:
    """ms per item, PyTorch and onnxruntime, at batch 1 and 32, on the run's validation inputs."""
    predictor = load(run_dir, device="cpu")
    session = onnx_session(onnx_file, threads)
    signature = graft_onnx.signature_for(predictor.modality)
    items, where = graft_onnx.parity_inputs(run_dir, predictor, 32)
    items = (items * (32 // len(items) + 1))[:32]  # a small validation set is repeated up to 32
    rows = []
    for batch_size in (1, 32):
        _, x = next(iter(predictor.pipeline.batches(items[:batch_size], batch_size, torch.device("cpu"))))
        feeds = signature.feeds(x, predictor.preprocessing)

        def torch_call(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                predictor.model(x).softmax(1)

        def onnx_call(feeds: dict[str, np.ndarray] = feeds) -> None:
            session.run([graft_onnx.OUTPUT], feeds)

        n = x.shape[0]
        t_torch, t_onnx = median_seconds(torch_call, repeats), median_seconds(onnx_call, repeats)
        rows.append(
            {
                "batch": n,
                "input_shape": list(x.shape),
                "inputs": where,
                "torch_ms_per_item": round(1000 * t_torch / n, 2),
                "onnxruntime_ms_per_item": round(1000 * t_onnx / n, 2),
                "speedup": round(t_torch / t_onnx, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-run", type=Path, help="an image run folder (default: train one)")
    parser.add_argument("--text-run", type=Path, help="a text run folder (default: train one)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per cell (default: 30)")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads for both runtimes (default: each one's own default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {"image": args.image_run or image_run(), "text": args.text_run or text_run()}
    import onnxruntime

    results: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": args.threads or "default",
        "load_average_before": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "models": {},
    }
    for kind, run_dir in runs.items():
        onnx_file = OUT / f"{kind}.onnx"
        exported = export(run_dir, "onnx", onnx_file, log=print)
        meta = json.loads((run_dir / "graft.json").read_text())
        results["models"][kind] = {
            "run_dir": str(run_dir),
            "backbone": meta["backbone"]["name"],
            "preprocessing": meta["preprocessing"],
            "export": exported,
            "latency": latency(run_dir, onnx_file, args.repeats, args.threads),
        }
    results["load_average_after"] = os.getloadavg()
    for kind, model in results["models"].items():
        threads = {k: results[k] for k in ("torch_threads", "onnxruntime_threads")}
        threads["max_abs_diff"] = model["export"]["max_abs_diff"]
        emit(*({"row": f"{kind} batch {r['batch']}", "backbone": model["backbone"], **r, **threads}
               for r in model["latency"]))
    print(
        f"\ntorch {results['torch']} ({results['torch_threads']} threads), onnxruntime "
        f"{results['onnxruntime']} ({results['onnxruntime_threads']} threads); load average "
        f"{results['load_average_before'][0]:.1f} before, {results['load_average_after'][0]:.1f} after"
    )
    print(HEADER)
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, model in results["models"].items():
        e = model["export"]
        for row in model["latency"]:
            shape = "x".join(map(str, row["input_shape"][1:]))
            print(
                f"| {kind}: {model['backbone']} ({shape}) | {e['max_abs_diff']:.1e} ({e['sample_source']}) | "
                f"{row['batch']} | {row['torch_ms_per_item']} | {row['onnxruntime_ms_per_item']} | "
                f"{row['speedup']}x |"
            )


if __name__ == "__main__":
    main()
