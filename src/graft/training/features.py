"""Frozen-backbone features, computed once through the modality and cached on disk.

The cache key covers everything that changes the numbers: backbone and weights, preprocessing,
flip averaging and the exact inputs (the modality's fingerprint: path, size and mtime of each
file, the bytes of arrays, the characters of texts). A second run with other head settings
therefore skips extraction entirely.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone
from ..bundle import atomic_write
from ..modalities.base import Features, Modality

FEATURES_VERSION = 1  # bump when extraction changes numerically

__all__ = ["FEATURES_VERSION", "Features", "cache_dir", "cache_key", "cached_features"]


def cache_dir() -> Path:
    env = os.environ.get("GRAFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("graft"))


def cache_key(modality: Modality, backbone: Backbone, prep: Any, sources: Sequence[Any], flip: bool) -> str:
    spec = {
        "v": FEATURES_VERSION,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "prep": prep.to_dict(),
        "flip": flip,
        "n": len(sources),
    }
    head = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    inputs = modality.fingerprint(sources)[:24]
    return f"{backbone.name.replace('/', '_').strip('_')}-{head}-{inputs}"


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
) -> Features:
    """modality.encode, memoised on disk as safetensors (no pickle) under GRAFT_CACHE_DIR."""
    from safetensors.numpy import load_file, save_file

    key = cache_key(modality, backbone, prep, sources, flip)
    path = (directory or cache_dir()) / "features" / f"{key}.safetensors"
    if path.is_file():
        try:
            data = load_file(str(path))
            failures = json.loads(data["failures_json"].tobytes())
            return Features(
                data["values"],
                data["ok"].astype(bool),
                {int(k): v for k, v in failures.items()},
                0.0,
                cached=True,
            )
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    feats = modality.encode(backbone, prep, sources, flip=flip, batch_size=batch_size, desc=desc)
    blob = np.frombuffer(json.dumps(feats.failures).encode(), dtype=np.uint8).copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda tmp: save_file(
            {"values": feats.values, "ok": feats.ok.astype(np.uint8), "failures_json": blob},
            str(tmp),
        ),
    )
    return feats
