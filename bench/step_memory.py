"""The memory floor of fine-tuning on a CPU: peak RSS of a process that only runs EfficientNet-Lite0
training steps (forward, backward, AdamW) on random batches, at `--precision auto`'s arithmetic.

    python bench/step_memory.py --batch 64 [--size 224]

`bench/memory_scale.py` measures graft's whole run; this is what the network's step alone needs,
the bound below which no data path can bring a run at that batch and size.
"""

from __future__ import annotations

import argparse
import resource

import torch

from graft.backbones import create_backbone
from graft.compute import autocast, resolve_precision, use_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    backbone = create_backbone("efficientnet_lite0")
    model = torch.nn.Sequential(backbone.body, torch.nn.Flatten(), torch.nn.Linear(backbone.num_features, 10))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters())
    device = torch.device("cpu")
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    precision = resolve_precision("auto", device)
    with use_precision(precision):
        for _ in range(args.steps):
            with autocast(device):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch {args.batch}, {args.size} px, {precision.name}: peak RSS {peak:,.0f} MB")


if __name__ == "__main__":
    main()
