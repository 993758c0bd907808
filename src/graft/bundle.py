"""The run bundle: `model.safetensors` + `graft.json`. Writes are atomic; loading never unpickles."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import BundleError

BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "graft.json"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def library_versions() -> dict[str, str]:
    import numpy
    import timm
    import torchvision

    from . import __version__

    return {
        "graft": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _save_folder(run_dir: Path, name: str, write: Callable[[Path], None]) -> None:
    """An asset folder (a tokenizer), written beside and swapped in whole (a rename, like atomic_write)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=run_dir))
    try:
        write(staging)
        target = run_dir / name
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=run_dir))
            os.replace(target, old / name)
            shutil.rmtree(old)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_bundle(
    run_dir: Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    assets: dict[str, Callable[[Path], None]] | None = None,
) -> None:
    """Weights and asset folders (a text model's tokenizer/) first, metadata last: a folder with
    graft.json always has matching weights."""
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    for name, write in (assets or {}).items():
        _save_folder(run_dir, name, write)
    write_json(run_dir / META_FILE, {"format": BUNDLE_FORMAT, **meta, "versions": library_versions()})


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise BundleError(f"{run_dir} is not a graft run folder: {META_FILE} is missing")
    meta = json.loads(path.read_text())
    if meta.get("format", 0) > BUNDLE_FORMAT:
        raise BundleError(f"{path} was written by a newer graft (format {meta['format']}); upgrade graft")
    return meta


def read_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / WEIGHTS_FILE))
