"""Where graft caches what it computes once (features, decoded images, exported engines):
GRAFT_CACHE_DIR, else the user's cache folder (e.g. ~/.cache/graft)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("GRAFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("graft"))


_warned: set[Path] = set()


def usable_folder(folder: Path, quiet: bool = False) -> bool:
    """Whether the cache folder exists or can be made, and takes a file. If not, one warning
    (naming GRAFT_CACHE_DIR; none when `quiet`) and training goes on without the cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        if not quiet:
            warn_unusable(folder, err)
        return False
    return True


def warn_unusable(folder: Path, err: OSError) -> None:
    """One warning per cache folder that cannot be written: graft goes on without caching there."""
    if folder in _warned:
        return
    _warned.add(folder)
    reason = err.strerror or type(err).__name__
    warnings.warn(
        f"the feature cache {folder} cannot be written ({reason}): training without it; "
        "set GRAFT_CACHE_DIR to a writable folder to cache features",
        stacklevel=3,
    )
