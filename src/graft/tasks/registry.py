"""The tasks graft knows: the built-in ones (single-label, multi-label, regression), registered here
on first use, and any a plugin adds with `register_task`; `resolve_task` picks one for the labels
as read (`--task auto`). The tasks themselves never import this module."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..config import TASK_CHOICES
from ..errors import ConfigError
from ..registry import Registry
from .base import RawLabel, Task


def _load_builtins() -> None:
    # imported on first use: `import graft.tasks` stays light (a task module reads the data package)
    from .multi import MultiLabel
    from .regression import Regression
    from .single import SingleLabel

    for task in (MultiLabel, Regression, SingleLabel):
        register_task(task)


_TASKS: Registry[type[Task]] = Registry("task", _load_builtins)


def register_task(cls: type[Task]) -> type[Task]:
    return _TASKS.register(cls.name, cls)


def task_names() -> list[str]:
    """Every registered task's name (the built-in ones first loaded)."""
    return sorted(_TASKS.all())


def get_task(name: str, names: Sequence[str] = (), state: dict[str, Any] | None = None) -> Task:
    return _TASKS.get(name)(tuple(names), dict(state or {}))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def auto_task(raw: Sequence[RawLabel], separator: str) -> str:
    """`--task auto`: several label columns of 0/1 are multi-label, of other numbers regression; one
    column of numbers with a fraction among them is regression (integers stay classes: pass --task
    regression for counts or ratings); one holding the separator is multi-label; else single-label."""
    if raw and isinstance(raw[0], tuple):
        cells = {c for row in raw for c in row}
        if cells <= {"0", "1", "0.0", "1.0"}:
            return "multi"
        if all(_number(c) is not None for c in cells):
            return "regression"
        raise ConfigError(
            "several --label-column values: each column must hold 0/1 (multi-label) or numbers "
            "(regression targets)"
        )
    values = [_number(str(r)) for r in raw]
    if raw and all(v is not None for v in values) and any(v != int(v) for v in values if v is not None):
        return "regression"
    if any(separator in str(r) for r in raw):
        return "multi"
    return "single"


def resolve_task(spec: str | None, raw: Sequence[RawLabel], columns: Sequence[str], separator: str) -> Task:
    """The task of `--task` (auto: `auto_task`) for the training labels as read."""
    spec = spec or "auto"
    if spec not in TASK_CHOICES:
        raise ConfigError(f"unknown --task {spec!r}; choose one of {', '.join(TASK_CHOICES)}")
    name = auto_task(raw, separator) if spec == "auto" else spec
    return _TASKS.get(name).from_raw(raw, columns, separator)


def task_from_meta(meta: dict[str, Any]) -> Task:
    """The task a bundle was trained for: bundles written before tasks existed are single-label."""
    saved = meta.get("task") or {"name": "single"}
    return get_task(saved["name"], meta.get("classes", ()), saved.get("state"))
