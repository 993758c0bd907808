"""Frozen-backbone features, computed once through the modality and cached on disk.

The cache key covers everything that changes the numbers: backbone and weights, preprocessing,
flip averaging, the precision and the exact inputs (the modality's fingerprint: path, size and mtime of each
file, the bytes of arrays, the characters of texts). A second run with other head settings
therefore skips extraction entirely.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone
from ..bundle import atomic_write
from ..cache import cache_dir, usable_folder, warn_unusable
from ..distributed import ranks, shards
from ..modalities.base import Features, Modality
from ..runtime.precision import current_precision

FEATURES_VERSION = 2  # bump when extraction changes numerically (2: large JPEGs decode in draft mode)

__all__ = [
    "FEATURES_VERSION", "Features", "cache_dir", "cache_key", "cached_features", "cached_path", "extract",
    "store",
]  # fmt: skip


def cache_key(modality: Modality, backbone: Backbone, prep: Any, sources: Sequence[Any], flip: bool) -> str:
    spec = {
        "v": FEATURES_VERSION,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "prep": prep.to_dict(),
        "flip": flip,
        "n": len(sources),
        "precision": current_precision().name,  # bf16 features differ from fp32 ones
    }
    head = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    inputs = modality.fingerprint(sources)[:24]
    return f"{backbone.name.replace('/', '_').strip('_')}-{head}-{inputs}"


def cached_path(
    modality: Modality,
    backbone: Backbone,
    prep: Any,
    sources: Sequence[Any],
    flip: bool,
    directory: Path | None = None,
) -> Path:
    """Where `cached_features` keeps (or will keep) these features."""
    key = cache_key(modality, backbone, prep, sources, flip)
    return (directory or cache_dir()) / "features" / f"{key}.safetensors"


def cached_features(
    modality: Modality,
    backbone: Backbone,
    sources: Sequence[Any],
    prep: Any,
    *,
    flip: bool = False,
    batch_size: int = 64,
    desc: str = "features",
    directory: Path | None = None,
    engine: str = "auto",
) -> Features:
    """modality.encode, memoised on disk as safetensors (no pickle) under GRAFT_CACHE_DIR. In a
    multi-process run each process encodes its part of `sources` and every process gets them all;
    rank 0 writes the same cache entry a single process would (the key does not depend on the
    number of processes), so either kind of run reuses the other's features."""
    path = cached_path(modality, backbone, prep, sources, flip, directory)
    folder = path.parent
    usable = usable_folder(folder)
    feats = _read(path) if usable and path.is_file() else None
    if not ranks.any_process(feats is None):  # every process has them from the cache
        return feats  # type: ignore[return-value]
    feats = extract(
        modality, backbone, prep, sources, flip=flip, batch_size=batch_size, desc=desc, engine=engine
    )
    if usable:
        store(path, feats)
    return feats


def store(path: Path, feats: Features) -> None:
    """`feats` as the cache entry at `path` (written by rank 0; a cache that cannot be written
    warns once and the features are still good)."""
    from safetensors.numpy import save_file

    if not (ranks.is_main() and usable_folder(path.parent)):
        return
    blob = np.frombuffer(json.dumps(feats.failures).encode(), dtype=np.uint8).copy()
    try:
        atomic_write(
            path,
            lambda tmp: save_file(
                {"values": feats.values, "ok": feats.ok.astype(np.uint8), "failures_json": blob},
                str(tmp),
            ),
        )
    except OSError as err:  # full, or made read-only meanwhile: the features are still good
        warn_unusable(path.parent, err)


def _read(path: Path) -> Features | None:
    from safetensors.numpy import load_file

    try:
        data = load_file(str(path))
        failures = json.loads(data["failures_json"].tobytes())
        failures = {int(k): v for k, v in failures.items()}
        return Features(data["values"], data["ok"].astype(bool), failures, 0.0, cached=True)
    except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
        path.unlink(missing_ok=True)
        return None


def extract(
    modality: Modality, backbone: Backbone, prep: Any, sources: Sequence[Any], **options: Any
) -> Features:
    """modality.encode; with several processes, each encodes a contiguous part and all get the merge."""
    if ranks.world_size() == 1:
        return modality.encode(backbone, prep, sources, **options)
    start, stop = shards.split_range(len(sources))
    part = modality.encode(backbone, prep, sources[start:stop], **options)
    parts = [(first, p) for first, p in ranks.gather_objects((start, part)) if len(p.ok)]
    return Features(
        np.concatenate([p.values for _, p in parts]).astype(np.float32, copy=False),
        np.concatenate([p.ok for _, p in parts]),
        {first + i: reason for first, p in parts for i, reason in p.failures.items()},
        max(p.seconds for _, p in parts),
        cached=False,
        engine=part.engine,
    )
