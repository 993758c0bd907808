"""Feature-extraction images/s of the default backbone by resolution, beside this machine's matmul roofline.

    python -m bench speed --only throughput -- [--sizes 96 128 160 224] [--seconds 5] [--images 640]
        [--photos 256] [--matmul-size 2048 --reps 5] [--threads N]

In one process: the fp32 and bf16 "roofline" as the GFLOP/s of a large torch.matmul (n x n, 2n^3
FLOPs, median of --reps timed runs after a warm-up), and for each input size the backbone's FLOPs per
image counted by `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs), then images/s
for four paths:
  (a) plain forward: fp32, NCHW, eval mode, under torch.no_grad: the seed loop's forward;
  (b) torch forward only: torch.inference_mode + channels_last (+ bf16 autocast only where
      `graft.compute.bf16_supported(cpu)` says the CPU has native bf16), on one reused random batch
      (no decoding, no resizing: the network alone);
  (b') ONNX Runtime forward only: the same network exported as graft.engine exports it;
  (c) graft end to end: `ImageModality.encode` with its default engine (auto: see graft.engine; the
      timed call includes the ONNX export, the cache being fresh), as `graft train` runs it: decode
      the JPEG, resize, crop, normalise, forward, with graft's default DataLoader workers, on the
      first --images JPEGs of the CIFAR-10 copy (every class), after a one-batch warm-up.
Then the large-photo table (graft's end-to-end target): --photos CIFAR-10 JPEGs upscaled to 500 x 375 and
saved at quality 90, at 224 px: the network alone (torch eager channels_last: the baseline; ONNX
Runtime), decoding alone (full and draft-mode), and graft end to end with each engine and with 0 or
graft's default decode workers, each as a multiple of the baseline, measured in this one run.
Achieved GFLOP/s = images/s x FLOPs/image; the tables give it as a fraction of the fp32 roofline
(the JSON also has the bf16 one). A matmul is the best case: depthwise convolutions (most of
EfficientNet's layers) are memory-bound, so a small fraction is expected. On a CPU without native
bf16 (no AVX512-BF16/AMX), oneDNN emulates bf16 and the bf16 "roofline" is an emulation number,
typically far below fp32 (and a 2048 bf16 matmul takes seconds per rep there: lower --matmul-size
for a quick look).

The backbone is graft's create_backbone("efficientnet_lite0").body (timm tf_efficientnet_lite0,
num_classes=0), batch --batch-size; speed does not depend on the weights (random here).
Unpack the data first:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.data import BENCH, DATA, make_photos
from bench.harness import emit, graft_runtime
from bench.suites.speed import items_per_second
from graft.backbones import create_backbone
from graft.modalities import get_modality

bf16_supported = graft_runtime("bf16_supported")


def matmul_gflops(n: int, dtype: torch.dtype, reps: int) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9


def flops_per_image(model: torch.nn.Module, size: int) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def forward_per_second(
    model: torch.nn.Module, x: torch.Tensor, graft_path: bool, bf16: bool, seconds: float
) -> float:
    """(a) plain or (b) graft's forward alone, on one reused batch `x`."""
    if graft_path:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        context = torch.inference_mode()
    else:
        model = model.to(memory_format=torch.contiguous_format)
        x = x.contiguous()
        context = torch.no_grad()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with context, autocast:
        return items_per_second(lambda: model(x), len(x), seconds)


def end_to_end_per_second(
    backbone, size: int, sources: list[str], batch_size: int, engine: str = "auto", workers: int | None = None
) -> float:
    """graft's extraction (`ImageModality.encode`) on JPEG files, after a one-batch warm-up. With
    engine auto the timed call includes the ONNX export (a fresh GRAFT_CACHE_DIR: nothing cached)."""
    import tempfile
    from unittest import mock

    from graft.data import pipeline

    modality = get_modality("image")
    prep = backbone.preprocessing.with_size(size)
    patches = [mock.patch.dict("os.environ", {"GRAFT_CACHE_DIR": tempfile.mkdtemp(prefix="graft-bench-")})]
    if workers is not None:
        patches.append(mock.patch.object(pipeline, "default_workers", lambda: workers))
    with patches[0], patches[1] if len(patches) > 1 else nullcontext():
        common = dict(flip=False, batch_size=batch_size, engine=engine)
        modality.encode(backbone, prep, sources[:batch_size], desc="warm-up", **common)
        started = time.perf_counter()
        feats = modality.encode(backbone, prep, sources, desc=f"{size}px", **common)
        seconds = time.perf_counter() - started
    if not feats.ok.all():
        raise SystemExit(f"{int((~feats.ok).sum())} JPEGs could not be read")
    return len(sources) / seconds


def _engine_modules() -> list[Any]:
    import importlib

    found = []
    for name in ("graft.runtime.engine", "graft.engine"):  # after and before the runtime package
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def onnx_forward_per_second(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    """The network alone on ONNX Runtime (graft.engine's export and session), one reused batch."""
    engine = next(m for m in _engine_modules() if hasattr(m, "_session"))  # the tree's engine module
    _export, _ort_forward, _session = engine._export, engine._ort_forward, engine._session

    forward = _ort_forward(_session(_export(model, x)))
    forward(x)  # warm-up
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        forward(x)
        n += len(x)
    return n / (time.perf_counter() - started)


def decode_per_second(backbone, size: int, sources: list[str], batch_size: int, draft: bool) -> float:
    """Decode, resize and crop only (graft's DataLoader and workers), no network."""
    from graft.data.pipeline import iterate_batches

    prep = backbone.preprocessing.with_size(size)
    started = time.perf_counter()
    for _ in iterate_batches(sources, prep, batch_size, decode_size=prep.resize_size if draft else None):
        pass
    return len(sources) / (time.perf_counter() - started)


def photos_table(backbone, sources: list[str], args: argparse.Namespace, fp32_roof: float) -> dict[str, Any]:
    """The end-to-end target: extraction of 500 x 375 JPEGs at 224 px against the network
    alone in torch eager channels_last, in this one run; plus decode alone and the engine and
    worker settings graft chooses between."""
    from graft.data import pipeline

    size = 224
    model = backbone.body.eval()
    flops = flops_per_image(model, size)
    x = torch.randn(args.batch_size, 3, size, size)
    threads = torch.get_num_threads()
    network_torch = forward_per_second(model, x, True, False, args.seconds)
    rows: dict[str, float] = {
        "network alone, torch eager channels_last (the baseline)": network_torch,
        "network alone, ONNX Runtime": onnx_forward_per_second(model, x, args.seconds),
        "decode + resize alone, full decode": decode_per_second(
            backbone, size, sources, args.batch_size, False
        ),
        "decode + resize alone, draft decode": decode_per_second(
            backbone, size, sources, args.batch_size, True
        ),
    }
    default_workers = pipeline.default_workers()
    for engine in ("torch", "auto"):
        for workers in sorted({0, default_workers}):
            rate = end_to_end_per_second(
                backbone, size, sources, args.batch_size, engine=engine, workers=workers
            )
            rows[f"graft end to end, engine {engine}, {workers} decode worker(s), {threads} threads"] = rate
    if threads > 1 and default_workers:  # the network on one thread fewer, beside the decode worker
        torch.set_num_threads(threads - 1)
        try:
            rate = end_to_end_per_second(
                backbone, size, sources, args.batch_size, engine="auto", workers=default_workers
            )
        finally:
            torch.set_num_threads(threads)
        name = f"graft end to end, engine auto, {default_workers} decode worker(s), {threads - 1} threads"
        rows[name] = rate
    print(f"\n{len(sources)} JPEGs of 500 x 375 px (quality 90) at {size} px, batch {args.batch_size}:\n")
    print("| path | images/s | x network alone (torch eager channels_last) | of fp32 roof |")
    print("| --- | --- | --- | --- |")
    for name, rate in rows.items():
        roof = (
            f"{rate * flops / 1e9 / fp32_roof:.1%}" if "decode" not in name or "end to end" in name else "-"
        )
        print(f"| {name} | {rate:.1f} | {rate / network_torch:.2f}x | {roof} |", flush=True)
    return {"size": size, "images": len(sources), "flops_per_image": flops, "images_per_second": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 224])
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per size, forward paths")
    parser.add_argument("--images", type=int, default=640, help="JPEGs for the end-to-end path")
    parser.add_argument("--data", default=str(DATA / "test"), help="a folder of class folders of JPEGs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=5, help="timed matmuls per dtype")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--photos", type=int, default=256, help="500 x 375 JPEGs for the large-photo table (0: skip it)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(str(p) for p in Path(args.data).glob("*/*.jpg"))
    if len(files) < args.images:
        raise SystemExit(f"{len(files)} JPEGs under {args.data}, {args.images} wanted (see the docstring)")
    sources = files[:: len(files) // args.images][: args.images]

    native_bf16 = bf16_supported(torch.device("cpu"))
    fp32_roof = matmul_gflops(args.matmul_size, torch.float32, args.reps)
    bf16_roof = matmul_gflops(args.matmul_size, torch.bfloat16, args.reps)
    print(
        f"threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16 {native_bf16}"
    )
    print(
        f"roofline ({args.matmul_size}x{args.matmul_size} matmul): fp32 {fp32_roof:.1f} GFLOP/s, "
        f"bf16 {bf16_roof:.1f} GFLOP/s{'' if native_bf16 else ' (emulated)'}\n"
    )
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    model = backbone.body.eval()
    graft_label = "inference_mode + channels_last" + (" + bf16" if native_bf16 else ", fp32")
    print(
        "| size | GFLOPs/image | (a) plain forward, no_grad, NCHW fp32: images/s | of fp32 roof "
        f"| (b) torch forward only ({graft_label}): images/s | of fp32 roof "
        "| (b') ONNX Runtime forward only: images/s | of fp32 roof "
        f"| (c) graft end to end ({len(sources)} JPEGs: decode, resize, forward; engine auto): images/s "
        "| of fp32 roof |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        flops = flops_per_image(model, size)
        x = torch.randn(args.batch_size, 3, size, size)
        row: dict[str, Any] = {"size": size, "flops_per_image": flops}
        cells = [str(size), f"{flops / 1e9:.3f}"]
        rates = {
            "plain_forward": forward_per_second(model, x, False, False, args.seconds),
            "graft_forward_only": forward_per_second(model, x, True, native_bf16, args.seconds),
            "onnxruntime_forward_only": onnx_forward_per_second(model, x, args.seconds),
            "graft_end_to_end": end_to_end_per_second(backbone, size, sources, args.batch_size),
        }
        for name, rate in rates.items():
            achieved = rate * flops / 1e9
            row[name] = {
                "images_per_second": round(rate, 1),
                "gflops": round(achieved, 2),
                "fraction_fp32_roofline": round(achieved / fp32_roof, 4),
                "fraction_bf16_roofline": round(achieved / bf16_roof, 4),
            }
            cells += [f"{rate:.0f}", f"{achieved / fp32_roof:.1%}"]
        rows.append(row)
        print("| " + " | ".join(cells) + " |", flush=True)
    photos = None
    if args.photos:
        made = make_photos(files[: args.photos], BENCH / "photos500x375")
        photos = photos_table(backbone, made, args, fp32_roof)
    machine = {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "native_bf16": native_bf16, "batch_size": args.batch_size, "matmul_size": args.matmul_size,
               "end_to_end_images": len(sources),
               "roofline_gflops": {"fp32": round(fp32_roof, 1), "bf16": round(bf16_roof, 1)}}  # fmt: skip
    emit(*({"row": f"{row['size']} px", **row, **machine} for row in rows))
    if photos:
        emit({"row": "large photos", **photos, **machine})


if __name__ == "__main__":
    main()
