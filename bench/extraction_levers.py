"""Feature-extraction speed of EfficientNet-Lite0 by resolution, memory format and dtype (one process).

    python bench/extraction_levers.py [--seconds 3] [--sizes 96 160 224]

Random weights (speed does not depend on them), batch 64, torch.inference_mode. Compare rows as
ratios: absolute numbers move with whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch


def images_per_second(
    model: torch.nn.Module, size: int, channels_last: bool, bf16: bool, seconds: float
) -> float:
    x = torch.randn(64, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)  # warm-up: one-off allocations and kernel selection
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sizes", type=int, nargs="*", default=[96, 160, 224])
    args = parser.parse_args()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    print(f"threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| size | layout | dtype | images/s |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes:
        for channels_last in (False, True):
            for bf16 in (False, True):
                rate = images_per_second(model, size, channels_last, bf16, args.seconds)
                layout = "channels_last" if channels_last else "NCHW"
                print(f"| {size} | {layout} | {'bf16' if bf16 else 'fp32'} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
