"""The run bundle: `model.safetensors` + `graft.json` (+ asset folders such as `tokenizer/`).

Writes are atomic (temp file + fsync + rename, with the user's umask) and loading never unpickles.
Format 2 records the SHA-256 of every weight and asset file and a digest of the model-defining
fields of graft.json (kept in the weights' own metadata too), and `verify_bundle` refuses any
disagreement with one line naming the file. Format 1 bundles (no digests) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BundleError

if TYPE_CHECKING:  # torch is imported where weights are read or written: predicting from ONNX needs none
    import torch

# 3: the head's weights under its parts' names (head.norm.*, head.fc.*); 4: a text model's features
# may pool several encoder layers (preprocessing.layers), which a format-3 reader would not build
BUNDLE_FORMAT = 4
READABLE_FORMATS = (1, 2, 3, 4)
WEIGHTS_FILE = "model.safetensors"
META_FILE = "graft.json"
# the fields of graft.json that define what the weights compute and what their outputs mean
MODEL_FIELDS = ("modality", "classes", "head", "backbone", "preprocessing")
DIGEST_KEY = "graft.model_digest"  # in model.safetensors' metadata
KNOWN_ASSETS = ("tokenizer",)  # asset folders a bundle may hold; a stale one is removed on save
_CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder, fsync it, then rename: readers (and a crash)
    never see half a file. The file gets the user's umask (mkstemp alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what atomic_write's mkstemp names look like


def stale_temp_files(folder: Path) -> list[Path]:
    """Temporary files of writes that never finished (the process was killed mid-write): hidden,
    so no reader takes them; a finished run removes them."""
    return sorted(p for p in Path(folder).glob(".*.tmp") if _TEMP_NAME.fullmatch(p.name) and p.is_file())


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def library_versions() -> dict[str, str]:
    import numpy
    import timm
    import torch
    import torchvision

    from ._version import __version__

    return {
        "graft": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def save_folder(run_dir: Path, name: str, write: Callable[[Path], None]) -> None:
    """An asset folder (a tokenizer), written beside and swapped in whole (a rename, like atomic_write)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=run_dir))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        write(staging)
        target = run_dir / name
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=run_dir))
            os.replace(target, old / name)
            shutil.rmtree(old)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- digests


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _json_digest(value: Any) -> str:
    """SHA-256 of `value` as it reads back from graft.json (canonical JSON)."""
    canonical = json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def model_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the model-defining fields, as they read back from graft.json (canonical JSON)."""
    return _json_digest({k: meta.get(k) for k in MODEL_FIELDS})


def field_digests(meta: dict[str, Any]) -> dict[str, str]:
    """Each model-defining field's own digest: a refusal can name the field that was edited."""
    return {k: _json_digest(meta.get(k)) for k in MODEL_FIELDS}


DISPLAY_NAMES = "display_names"  # graft.json: {"class": "name to show"}, not verified (edit freely)


def shown_classes(meta: dict[str, Any], where: Path | str = META_FILE) -> tuple[str, ...]:
    """The class names predictions show: `classes`, each replaced by its entry in `display_names`
    where it has one. The trained `classes` stay what data labels are matched against."""
    classes = tuple(meta["classes"])
    names = meta.get(DISPLAY_NAMES) or {}
    if not isinstance(names, dict) or not all(isinstance(v, str) and v for v in names.values()):
        raise BundleError(f'{where}: "{DISPLAY_NAMES}" must map class names to non-empty names to show')
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise BundleError(
            f'{where}: "{DISPLAY_NAMES}" names {", ".join(map(repr, unknown))}, not among the classes '
            f"{', '.join(map(repr, classes))}; its keys are the trained class names"
        )
    shown = tuple(names.get(c, c) for c in classes)
    if len(set(shown)) != len(shown):
        raise BundleError(f'{where}: "{DISPLAY_NAMES}" gives two classes the same name; make them distinct')
    return shown


def bundle_files(run_dir: Path, assets: list[str]) -> dict[str, str]:
    """relative path -> SHA-256 of the weights and of every file in the asset folders."""
    files = {WEIGHTS_FILE: file_sha256(run_dir / WEIGHTS_FILE)}
    for name in assets:
        for p in sorted((run_dir / name).rglob("*")):
            if p.is_file():
                files[p.relative_to(run_dir).as_posix()] = file_sha256(p)
    return files


def save_bundle(
    run_dir: Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    assets: dict[str, Callable[[Path], None]] | None = None,
) -> None:
    """Weights and asset folders (a text model's tokenizer/) first, metadata last: a folder with
    graft.json always has matching weights. graft.json records every file's SHA-256 and the
    model-defining fields' digest, which the weights carry as well."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    assets = assets or {}
    digest = model_digest(meta)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    st_meta = {"format": "pt", DIGEST_KEY: digest}
    atomic_write(run_dir / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata=st_meta))
    for name, write in assets.items():
        save_folder(run_dir, name, write)
    for stale in KNOWN_ASSETS:  # a replaced run must not leave another model's tokenizer behind
        if stale not in assets and (run_dir / stale).is_dir():
            shutil.rmtree(run_dir / stale)
    integrity = {
        "model_digest": digest,
        "fields": field_digests(meta),
        "files": bundle_files(run_dir, sorted(assets)),
    }
    write_json(
        run_dir / META_FILE,
        {"format": BUNDLE_FORMAT, **meta, "integrity": integrity, "versions": library_versions()},
    )


# --------------------------------------------------------------------------- reading


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise BundleError(f"{run_dir} is not a graft run folder: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path} is not valid JSON ({err}); restore it or train again") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path} is not a graft bundle description (a JSON object was expected)")
    fmt = meta.get("format", 1)
    if not isinstance(fmt, int) or fmt not in READABLE_FORMATS:
        if isinstance(fmt, int) and fmt > BUNDLE_FORMAT:
            versions = meta.get("versions")
            wrote = (
                versions.get("graft", "a newer version") if isinstance(versions, dict) else "a newer version"
            )
            raise BundleError(
                f"{path} was written by graft {wrote} (bundle format {fmt}); this graft reads formats "
                f"up to {BUNDLE_FORMAT}: upgrade graft to {wrote} or newer"
            )
        raise BundleError(f"{path} has an unknown bundle format {fmt!r}")
    missing = [k for k in ("classes", "head", "preprocessing", "backbone") if k not in meta]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}: restore it or train again")
    return meta


def with_columns(
    meta: dict[str, Any], text_column: str | None, label_column: str | None, image_column: str | None = None
) -> dict[str, Any]:
    """The bundle's metadata with the table columns given on the command line."""
    recipe = dict(meta.get("recipe") or {})
    given = {"text_column": text_column, "label_column": label_column, "image_column": image_column}
    return meta | {"recipe": recipe | {k: v for k, v in given.items() if v}}


def _weights_digest(path: Path) -> str | None:
    from safetensors import safe_open

    damaged = _damaged_errors()
    try:
        with safe_open(str(path), framework="np") as f:  # metadata only: no torch needed
            return (f.metadata() or {}).get(DIGEST_KEY)
    except damaged as err:
        raise BundleError(f"{path} is damaged ({_first_line(err)}); copy the bundle again") from None


def _damaged_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (SafetensorError, OSError, RuntimeError, ValueError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def verify_bundle(run_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse a bundle whose files or model-defining fields disagree with what was recorded.
    Only what is recorded is checked: a format-1 bundle has no digests."""
    run_dir = Path(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{weights} is missing: copy the whole run folder")
    integrity = meta.get("integrity")
    if integrity is None:
        return
    if not isinstance(integrity, dict):
        raise BundleError(f"{run_dir / META_FILE}: its integrity record is damaged")
    for rel, expected in (integrity.get("files") or {}).items():
        path = run_dir / rel
        if not path.is_file():
            raise BundleError(f"{path} is missing: copy the whole run folder")
        if file_sha256(path) != expected:
            raise BundleError(
                f"{path} does not match the SHA-256 recorded in {META_FILE}: it was changed or damaged"
            )
    recorded = integrity.get("model_digest")
    if recorded is None:
        return
    if model_digest(meta) != recorded or _weights_digest(weights) not in (None, recorded):
        fields = integrity.get("fields") or {}
        edited = [k for k, d in field_digests(meta).items() if fields.get(k) not in (None, d)]
        which = (
            f"its {'field' if len(edited) == 1 else 'fields'} {', '.join(map(repr, edited))}"
            if edited
            else f"its {', '.join(MODEL_FIELDS)}"
        )
        raise BundleError(
            f"{run_dir / META_FILE}: {which} changed after training and no longer match {WEIGHTS_FILE}; "
            f'restore the original graft.json (to show other class names, set "{DISPLAY_NAMES}": '
            '{"class": "name"}, which may be edited)'
        )


def read_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The bundle's weights under today's names (a format 1-2 head's numbered keys renamed)."""
    from safetensors.torch import load_file

    from .heads import upgrade_head_keys

    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise BundleError(f"{path} is missing: copy the whole run folder")
    damaged = _damaged_errors()
    try:
        return upgrade_head_keys(load_file(str(path)))
    except damaged as err:  # a truncated or foreign file
        raise BundleError(f"{path} is damaged ({_first_line(err)}); copy the bundle again") from None
