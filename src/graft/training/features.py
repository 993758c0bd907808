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
from dataclasses import dataclass
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
    "FEATURES_VERSION", "Features", "KnownRows", "cache_dir", "cache_key", "cached_features", "cached_path",
    "extract", "extract_reusing", "has_entries", "known_rows", "store",
]  # fmt: skip


@dataclass(frozen=True)
class KnownRows:
    """Feature rows extracted already (`graft train --backbone auto`'s pick, on a subset), by each
    input's fingerprint, for one backbone, preprocessing, flip and precision (`spec`): a later
    extraction of more inputs with the same `spec` encodes only the others."""

    spec: str
    rows: dict[str, np.ndarray]


def _spec(backbone: Backbone, prep: Any, flip: bool) -> dict[str, Any]:
    return {
        "v": FEATURES_VERSION,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "prep": prep.to_dict(),
        "flip": flip,
        "precision": current_precision().name,  # bf16 features differ from fp32 ones
    }


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def known_rows(
    modality: Modality, backbone: Backbone, prep: Any, parts: Sequence[tuple[Sequence[Any], Features]]
) -> KnownRows:
    """The readable rows of `parts` (inputs and their features, extracted without flipping)."""
    rows = {
        modality.fingerprint([source]): feats.values[i]
        for sources, feats in parts
        for i, source in enumerate(sources)
        if feats.ok[i]
    }
    return KnownRows(_digest(_spec(backbone, prep, False)), rows)


def cache_key(
    modality: Modality,
    backbone: Backbone,
    prep: Any,
    sources: Sequence[Any],
    flip: bool,
    inputs: str | None = None,
) -> str:
    """The entry's name; `inputs`: `modality.fingerprint(sources)` when the caller has it already."""
    head = _digest(_spec(backbone, prep, flip) | {"n": len(sources)})
    inputs = (inputs or modality.fingerprint(sources))[:24]
    return f"{_prefix(backbone)}-{head}-{inputs}"


def _prefix(backbone: Backbone) -> str:
    return backbone.name.replace("/", "_").strip("_")


def has_entries(backbone: Backbone, directory: Path | None = None) -> bool:
    """Whether the cache holds any features of `backbone` (a cold cache: nothing to look up)."""
    folder = (directory or cache_dir()) / "features"
    return folder.is_dir() and any(folder.glob(f"{_prefix(backbone)}-*.safetensors"))


def cached_path(
    modality: Modality,
    backbone: Backbone,
    prep: Any,
    sources: Sequence[Any],
    flip: bool,
    directory: Path | None = None,
    inputs: str | None = None,
) -> Path:
    """Where `cached_features` keeps (or will keep) these features."""
    key = cache_key(modality, backbone, prep, sources, flip, inputs)
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
    known: KnownRows | None = None,
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
    options = {"flip": flip, "batch_size": batch_size, "desc": desc, "engine": engine}
    feats = extract_reusing(known, modality, backbone, prep, sources, **options)
    if usable:
        store(path, feats)
    return feats


def extract_reusing(
    known: KnownRows | None,
    modality: Modality,
    backbone: Backbone,
    prep: Any,
    sources: Sequence[Any],
    **options: Any,
) -> Features:
    """`extract`, the rows `known` holds for this backbone and preprocessing taken from it."""
    if known is None or known.spec != _digest(_spec(backbone, prep, bool(options.get("flip")))):
        return extract(modality, backbone, prep, sources, **options)
    return _extract_around(known, modality, backbone, prep, sources, options)


def _extract_around(
    known: KnownRows, modality: Modality, backbone: Backbone, prep: Any, sources: Sequence[Any], options: dict
) -> Features:
    """`sources`' features, encoding only the inputs `known` lacks."""
    prints = [modality.fingerprint([source]) for source in sources]
    missing = [i for i, p in enumerate(prints) if p not in known.rows]
    if len(missing) == len(sources):
        return extract(modality, backbone, prep, sources, **options)
    width = len(next(iter(known.rows.values())))
    values, ok = np.zeros((len(sources), width), np.float32), np.ones(len(sources), bool)
    failures, seconds, engine = {}, 0.0, None
    if missing:
        part = extract(modality, backbone, prep, [sources[i] for i in missing], **options)
        values[missing], ok[missing] = part.values, part.ok
        failures = {missing[i]: reason for i, reason in part.failures.items()}
        seconds, engine = part.seconds, part.engine
    for i, p in enumerate(prints):
        if p in known.rows:
            values[i] = known.rows[p]
    reused = len(sources) - len(missing)
    return Features(values, ok, failures, seconds, cached=False, engine=engine, reused=reused)


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
