"""Frozen-backbone features, computed once and cached on disk.

The cache key covers everything that changes the numbers: backbone and weights, preprocessing,
flip averaging and the exact inputs (path, size and mtime of each file, or the bytes of arrays).
A second run with other head settings therefore skips extraction entirely.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backbones import Backbone, Preprocessing
from .bundle import atomic_write
from .data.pipeline import Source, iterate_batches, normalize
from .progress import Progress
from .train import autocast

FEATURES_VERSION = 1  # bump when extraction changes numerically


@dataclass
class Features:
    values: np.ndarray  # float32 (N, D); rows of unreadable inputs are zero
    ok: np.ndarray  # bool (N,): False where the input could not be read
    failures: dict[int, str]  # index -> reason
    seconds: float  # extraction time (0 on a cache hit)
    cached: bool


def cache_dir() -> Path:
    env = os.environ.get("GRAFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("graft"))


def fingerprint_sources(sources: Sequence[Source], texts: bool = False) -> str:
    """Identity of the inputs: path, size and mtime of files; the bytes of in-memory images; the
    characters of texts (`texts=True`)."""
    h = hashlib.sha256()
    for src in sources:
        if texts:
            h.update(str(src).encode("utf-8", "surrogatepass") + b"\x00")
        elif isinstance(src, str | Path):
            st = os.stat(src)
            h.update(f"{Path(src).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        else:
            h.update(np.ascontiguousarray(np.asarray(src)).tobytes())
    return h.hexdigest()


def cache_key(backbone: Backbone, prep: Preprocessing, sources: Sequence[Source], flip: bool) -> str:
    spec = {
        "v": FEATURES_VERSION,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "prep": prep.to_dict(),
        "flip": flip,
        "n": len(sources),
    }
    head = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    inputs = fingerprint_sources(sources, texts=backbone.modality == "text")[:24]
    return f"{backbone.name.replace('/', '_').strip('_')}-{head}-{inputs}"


def extract_features(
    backbone: Backbone,
    sources: Sequence[Source],
    prep: Preprocessing,
    *,
    flip: bool = False,
    batch_size: int = 64,
    desc: str = "features",
) -> Features:
    """Backbone features for each source; `flip` averages them with the mirrored image's."""
    if backbone.modality == "text":
        return _extract_text(backbone, sources, prep, batch_size=batch_size, desc=desc)
    device = next(backbone.body.parameters()).device
    # outside inference mode: weights converted inside it could never train again (fine-tuning
    # after a probe trains this very module)
    body = backbone.body.eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _extract_images(body, sources, prep, device, backbone.num_features, flip, batch_size, desc)


def _extract_images(
    body: torch.nn.Module,
    sources: Sequence[Source],
    prep: Preprocessing,
    device: torch.device,
    num_features: int,
    flip: bool,
    batch_size: int,
    desc: str,
) -> Features:
    values = np.zeros((len(sources), num_features), dtype=np.float32)
    ok = np.zeros(len(sources), dtype=bool)
    failures: dict[int, str] = {}
    started = time.perf_counter()
    with Progress(len(sources), desc) as bar:
        for batch in iterate_batches(sources, prep, batch_size):
            failures.update(batch.failures)
            if len(batch.indices):
                x = normalize(batch.images.to(device), prep)
                with autocast(device):
                    out = body(x).flatten(1).float()
                    if flip:
                        out = (out + body(x.flip(3)).flatten(1).float()) / 2
                values[batch.indices.numpy()] = out.cpu().numpy()
                ok[batch.indices.numpy()] = True
            bar.update(len(batch.indices) + len(batch.failures))
    return Features(values, ok, failures, time.perf_counter() - started, cached=False)


def _extract_text(
    backbone: Backbone, texts: Sequence[Source], prep, *, batch_size: int, desc: str
) -> Features:
    from .text import predict_ids, tokenize

    started = time.perf_counter()
    ids = tokenize(backbone.tokenizer, [str(t) for t in texts], prep.max_length)
    values = predict_ids(backbone.body, ids, prep.pad_id, batch=batch_size).numpy().astype(np.float32)
    ok = np.ones(len(texts), dtype=bool)
    return Features(values, ok, {}, time.perf_counter() - started, cached=False)


def cached_features(
    backbone: Backbone,
    sources: Sequence[Source],
    prep: Preprocessing,
    *,
    flip: bool = False,
    batch_size: int = 64,
    desc: str = "features",
    directory: Path | None = None,
) -> Features:
    """extract_features, memoised on disk as safetensors (no pickle) under GRAFT_CACHE_DIR."""
    from safetensors.numpy import load_file, save_file

    path = (directory or cache_dir()) / "features" / f"{cache_key(backbone, prep, sources, flip)}.safetensors"
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
    feats = extract_features(backbone, sources, prep, flip=flip, batch_size=batch_size, desc=desc)
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
