"""Tasks: what a run learns to predict (one class, several labels, numbers), behind one interface
(`base.Task`), beside the modalities (what the inputs are)."""

from .base import TASK_CHOICES, Task, get_task, register_task, task_from_meta

__all__ = ["TASK_CHOICES", "Task", "get_task", "register_task", "task_from_meta"]
