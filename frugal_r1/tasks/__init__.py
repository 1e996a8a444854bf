"""Tasks: prompts with checkable answers, from reasoning-gym or JSONL files (see `registry`)."""

from frugal_r1.tasks.registry import Task, load_task

__all__ = ["Task", "load_task"]
