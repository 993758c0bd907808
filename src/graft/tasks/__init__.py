"""Tasks: what a run learns to predict (one class, several labels, numbers), behind one interface
(`base.Task`), beside the modalities (what the inputs are)."""

from ..config import TASK_CHOICES
from .base import Task
from .registry import auto_task, get_task, register_task, resolve_task, task_from_meta, task_names

__all__ = [
    "TASK_CHOICES",
    "Task",
    "auto_task",
    "get_task",
    "register_task",
    "resolve_task",
    "task_from_meta",
    "task_names",
]
