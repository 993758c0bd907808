"""Exporters by format name: `export(run_dir, "onnx", out)` turns a run folder into a model another
runtime can serve. One file per format (`onnx.py`), registered here on first use; the format's own
packages are imported only when it runs, so `graft export --help` and a missing extra stay cheap.

Adding a format is one file that defines its `Exporter` (the types are `base.py`'s) and one line in
`_load_builtins`; a plugin calls `register_exporter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import ExportOptions
from ..registry import Registry
from .base import Exporter, ExportError, Log


def _load_builtins() -> None:
    # on first use, so `graft export --help` stays light; the formats never import this module
    from .onnx import ONNX

    register_exporter(ONNX)


_EXPORTERS: Registry[Exporter] = Registry(
    "export format", _load_builtins, "unknown {kind} {name!r}; graft exports to: {known}"
)


def register_exporter(exporter: Exporter) -> Exporter:
    return _EXPORTERS.register(exporter.name, exporter)


def formats() -> list[str]:
    return sorted(_EXPORTERS.all())


def get_exporter(name: str) -> Exporter:
    return _EXPORTERS.get(name)


def export(
    run_dir: str | Path,
    format: str = ExportOptions.format,
    out: str | Path | None = ExportOptions.out,
    *,
    samples: int = ExportOptions.samples,
    log: Log | None = None,
) -> dict[str, Any]:
    """Export a run folder; `out` defaults to `RUN_DIR/model<suffix>`. Returns a summary (the
    output path, the parity figure and where its samples came from, sizes, seconds)."""
    exporter = get_exporter(format)
    run_dir = Path(run_dir)
    target = Path(out) if out else run_dir / f"model{exporter.suffix}"
    if target.suffix != exporter.suffix:
        raise ConfigError(f"--out {target} must end in {exporter.suffix} for --format {format}")
    return exporter.export(run_dir, target, samples=samples, log=log or (lambda line: None))


__all__ = ["ExportError", "Exporter", "export", "formats", "get_exporter", "register_exporter"]
