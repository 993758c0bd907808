"""Where graft caches what it computes once (features, decoded images, exported engines):
GRAFT_CACHE_DIR, else the user's cache folder (e.g. ~/.cache/graft)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("GRAFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("graft"))
