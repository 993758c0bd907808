"""Several processes, one training run: data parallelism on Hugging Face Accelerate (the
`distributed` extra) over torch.distributed. Nothing here communicates by itself: Accelerate sets
up the process group (gloo on CPUs, NCCL on GPUs, with a timeout on every collective), its
`prepare_model` wraps the model in DistributedDataParallel (gradients all-reduced in backward),
and its collectives (`broadcast_object_list`, `gather_object`, `reduce`) carry the few values the
processes must agree on.

Two ways in: `graft train --devices N` (`launcher.launch`: N processes on this machine, through
torch.distributed's elastic launcher, the one under `accelerate launch` and torchrun), or any
launcher that sets WORLD_SIZE/RANK (`accelerate launch -m graft train ...`, several machines).
Either way `ranks.setup` joins the group. In a single process every helper is a no-op, accelerate is
never imported, and training is exactly what it was.

What is shared out: each global batch (`--batch-size` is the global batch) is split between the
processes (`shard`, `shard_loader`), validation batches are split and their outputs gathered
(`runtime.inference.forward_all(across_ranks=True)`), frozen-feature extraction is split and merged
(`training/features.py`). Rank 0 alone writes files (checkpoints, the cache, report and bundle).

The package: `ranks` (who this process is, joining the group, agreeing), `shards` (sharing data
out), `ddp` (the loop's DataParallel) and `launcher` (`--devices N`, only the runner uses it).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# The names of graft.distributed when it was one module, and where each lives now: the old paths
# keep working for one release, with a DeprecationWarning.
_MOVED: dict[str, str] = {
    **dict.fromkeys(
        ("DEFAULT_TIMEOUT_S", "RANK_SEED_STRIDE", "TIMEOUT_ENV", "any_process", "check_devices", "describe"),
        "ranks",
    ),
    **dict.fromkeys(
        ("from_main", "gather_objects", "is_main", "launched", "local_batch_size", "rank", "rank_seed"),
        "ranks",
    ),
    **dict.fromkeys(("setup", "sum_all", "timeout_seconds", "world_size"), "ranks"),
    **dict.fromkeys(("shard", "shard_loader", "split_range"), "shards"),
    **dict.fromkeys(("DataParallel",), "ddp"),
    **dict.fromkeys(("available", "check_launch", "launch"), "launcher"),
}


def __getattr__(name: str) -> Any:
    where = _MOVED.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"graft.distributed.{name} is deprecated: use graft.distributed.{where}.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(f"{__name__}.{where}"), name)
