"""Feature-extraction speed of EfficientNet-Lite0 by resolution, memory format and dtype (one process),
and (`--more`) the other extraction levers on real CIFAR-10 JPEGs.

    python -m bench speed --only extraction_levers -- [--seconds 3] [--rounds 3] [--sizes 96 160 224]
        [--dtypes fp32 bf16]
    python -m bench speed --only extraction_levers -- --more [--images 2000] [--size 96]

Random weights (speed does not depend on them), batch 64, torch.inference_mode. Each layout gets its
own copy of the model (`Module.to(memory_format=...)` converts in place, so one shared model would
carry channels_last weights into every later "NCHW" row: an earlier version of this script did
exactly that, and its 160/224 px "NCHW" rows were channels_last weights on NCHW inputs); the script
checks the weights' layout before timing. The rows of a size are timed in interleaved rounds
(median kept). Compare rows as ratios: absolute numbers move with whatever else the machine does.

`--more` times, on the first --images JPEGs of the CIFAR-10 copy (one pass each, after a warm-up):
decoding + resizing alone (in-process, and with one DataLoader worker, graft's default on 2 cores),
the model alone (inference mode, channels_last, fp32), the same after `torch.jit.freeze` +
`optimize_for_inference`, conv-BN folding with `torch.fx.experimental.optimization.fuse` (reported
as failing when timm's model cannot be traced), and graft's whole extraction path
(`ImageModality.encode`: decode, resize, normalise, forward) with 0 and 1 DataLoader workers.
Unpack the data first:
    mkdir -p .cache/data/cifar10 && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C .cache/data/cifar10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import timm
import torch

from bench.data import DATA
from bench.harness import emit
from bench.suites.speed import items_per_second


def _layout_is(model: torch.nn.Module, channels_last: bool) -> bool:
    """Whether every 4-d weight is in the given memory format (a 1x1 or depthwise kernel can be
    contiguous in both, so only kernels that are contiguous in exactly one format decide)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    other = torch.contiguous_format if channels_last else torch.channels_last
    deciding = [
        p
        for p in model.parameters()
        if p.ndim == 4 and p.is_contiguous(memory_format=fmt) != p.is_contiguous(memory_format=other)
    ]
    return bool(deciding) and all(p.is_contiguous(memory_format=fmt) for p in deciding)


def prepared(base: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """A copy of `base` in the row's memory format, checked: conversions must not leak into other rows."""
    model = copy.deepcopy(base)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not _layout_is(model, channels_last):
        raise RuntimeError(f"weights are not {'channels_last' if channels_last else 'NCHW'} for this row")
    return model


def images_per_second(model: torch.nn.Module, x: torch.Tensor, bf16: bool, seconds: float) -> float:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return items_per_second(lambda: model(x), len(x), seconds)


def layouts(args: argparse.Namespace) -> None:
    """Per size, the rows are timed in --rounds interleaved rounds and each row reports its median:
    on a shared machine a load change then moves every row alike instead of one."""
    base = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    print(f"threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| size | layout | dtype | images/s | NCHW fp32 = 1 |")
    print("| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        rows = [(cl, dtype) for cl in (False, True) for dtype in args.dtypes]
        models = {cl: prepared(base, cl) for cl in (False, True)}
        x = torch.randn(args.batch_size, 3, size, size)
        inputs = {False: x.contiguous(), True: x.contiguous(memory_format=torch.channels_last)}
        rates: dict[tuple[bool, str], list[float]] = {row: [] for row in rows}
        for _ in range(args.rounds):
            for cl, dtype in rows:
                rate = images_per_second(models[cl], inputs[cl], dtype == "bf16", args.seconds / args.rounds)
                rates[cl, dtype].append(rate)
        median = {row: statistics.median(v) for row, v in rates.items()}
        reference = median.get((False, "fp32"))
        for cl, dtype in rows:
            ratio = f"{median[cl, dtype] / reference:.2f}" if reference else ""
            layout = "channels_last" if cl else "NCHW"
            print(f"| {size} | {layout} | {dtype} | {median[cl, dtype]:.0f} | {ratio} |", flush=True)
            emit({"row": f"{size} px {layout} {dtype}", "images_per_s": median[cl, dtype],
                  "of_nchw_fp32": median[cl, dtype] / reference if reference else None})  # fmt: skip


def _timed(label: str, images: int, fn) -> None:
    try:
        fn(warm=True)
        started = time.perf_counter()
        fn(warm=False)
    except Exception as err:  # noqa: BLE001 - a lever that does not apply is a row, not a crash
        failure = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
        print(f"| {label} | fails: {failure} |", flush=True)
        emit({"row": label, "error": failure})
        return
    rate = images / (time.perf_counter() - started)
    print(f"| {label} | {rate:.0f} |", flush=True)
    emit({"row": label, "images_per_s": rate})


def more(args: argparse.Namespace) -> None:
    import graft.data.pipeline as pipeline
    from graft.backbones import create_backbone
    from graft.data.pipeline import iterate_batches, normalize
    from graft.modalities import get_modality

    files = sorted(str(p) for p in (DATA / "test").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no JPEGs under {DATA / 'test'}: unpack CIFAR-10 first (see the docstring)")
    step = max(1, len(files) // args.images)
    sources = files[::step][: args.images]  # every class, not the first class only
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    prep = backbone.preprocessing.with_size(args.size)
    body = backbone.body.eval().to(memory_format=torch.channels_last)
    n = len(sources)
    print(f"{n} CIFAR-10 JPEGs at {args.size} px, batch 64, threads {torch.get_num_threads()}")
    print("| lever | images/s |")
    print("| --- | --- |")

    def decode(workers: int):
        def go(warm: bool) -> None:
            for _ in iterate_batches(sources[:64] if warm else sources, prep, 64, workers=workers):
                pass

        return go

    _timed("decode + resize only, in-process", n, decode(0))
    _timed("decode + resize only, 1 DataLoader worker (graft's default on 2 cores)", n, decode(1))
    batches = [normalize(b.images, prep) for b in iterate_batches(sources, prep, 64, workers=0)]
    batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]

    def model_only(model):
        def go(warm: bool) -> None:
            with torch.inference_mode():
                for x in batches[:1] if warm else batches:
                    model(x)

        return go

    _timed("model only (inference mode, channels_last, fp32)", n, model_only(body))
    built: dict[str, torch.nn.Module] = {}  # each variant built once, at its warm-up, off the clock

    def jit(warm: bool) -> None:
        if "jit" not in built:
            with torch.no_grad():
                traced = torch.jit.trace(copy.deepcopy(body), batches[0]).eval()
                built["jit"] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        model_only(built["jit"])(warm)

    _timed("model only, `torch.jit.freeze` + `optimize_for_inference`", n, jit)

    def fused(warm: bool) -> None:
        from torch.fx.experimental.optimization import fuse

        if "fused" not in built:
            built["fused"] = fuse(copy.deepcopy(body))
        model_only(built["fused"])(warm)

    _timed("model only, conv-BN folding with `torch.fx.experimental.optimization.fuse`", n, fused)
    modality = get_modality("image")

    def extract(workers: int):
        def go(warm: bool) -> None:
            previous = pipeline.default_workers
            pipeline.default_workers = lambda: workers  # encode's loader asks this for its workers
            try:
                modality.encode(
                    backbone, prep, sources[:64] if warm else sources, flip=False, batch_size=64, desc="x"
                )
            finally:
                pipeline.default_workers = previous

        return go

    _timed("`ImageModality.encode` (graft's extraction), 0 workers", n, extract(0))
    _timed("`ImageModality.encode` (graft's extraction), 1 worker (default)", n, extract(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per row and size, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per size (median kept)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[96, 160, 224])
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--more", action="store_true", help="the other levers, on CIFAR-10 JPEGs")
    parser.add_argument("--images", type=int, default=2000, help="--more: JPEGs to time on")
    parser.add_argument("--size", type=int, default=96, help="--more: input size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    more(args) if args.more else layouts(args)


if __name__ == "__main__":
    main()
