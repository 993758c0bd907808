"""Sharing data out between processes: each global batch split between them (`shard`,
`shard_loader`), a contiguous part of n items (`split_range`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .ranks import rank, world_size


def shard(batch: Sequence[int]) -> list[int]:
    """This process's part of a global batch of indices: every `world_size`-th one from its rank
    (equal parts, and length-sorted text batches stay balanced). A batch smaller than the number
    of processes is repeated so that every process has at least one example."""
    n = world_size()
    batch = list(batch)
    if n == 1:
        return batch
    if len(batch) < n:
        batch = (batch * n)[:n]
    return batch[rank() :: n]


class _ShardedBatches:
    """A DataLoader batch sampler: the global batches of `batches`, this process's part of each."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return (shard(batch) for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def shard_loader(loader: Any) -> Any:
    """`loader` itself alone; with several processes, a loader of this process's part of each of its
    global batches. The batch order comes from the same generator (and seed) in every process, so
    the parts are disjoint. The sharded loader is made once per loader and kept (its workers
    persist across epochs as the loader's would)."""
    if world_size() == 1:
        return loader
    sharded = getattr(loader, "_graft_sharded", None)
    if sharded is None:
        from torch.utils.data import DataLoader

        options: dict[str, Any] = {}
        if loader.num_workers:
            options = dict(
                persistent_workers=loader.persistent_workers,
                prefetch_factor=loader.prefetch_factor,
                worker_init_fn=loader.worker_init_fn,
            )
        sharded = DataLoader(
            loader.dataset,
            batch_sampler=_ShardedBatches(loader.batch_sampler),
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            generator=loader.generator,
            **options,
        )
        loader._graft_sharded = sharded
    return sharded


def split_range(n: int) -> tuple[int, int]:
    """This process's contiguous part [start, stop) of n items (frozen-feature extraction)."""
    size, r = world_size(), rank()
    return n * r // size, n * (r + 1) // size
