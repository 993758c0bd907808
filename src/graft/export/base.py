"""What an exporter is: the types the export package and every format share (a format imports these,
never the package that registers it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import GraftError

Log = Callable[[str], None]


class ExportError(GraftError, RuntimeError):
    """An export that ran but cannot be trusted (a failed parity check); nothing was written."""


@dataclass(frozen=True)
class Exporter:
    name: str  # the --format value
    suffix: str  # the output file's suffix, e.g. ".onnx"
    export: Callable[..., dict[str, Any]]  # (run_dir, out, *, samples, log) -> summary
    description: str
