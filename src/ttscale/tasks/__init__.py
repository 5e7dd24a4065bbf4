"""Task families: built-in generated tasks with exact verifiers, and JSONL tasks for real data."""
from __future__ import annotations

from pathlib import Path

from ttscale.errors import TTScaleError, unknown
from ttscale.tasks.arith import Arith
from ttscale.tasks.base import LEVELS, SPLITS, BuiltinTask, Task, split_of
from ttscale.tasks.countdown import Countdown

BUILTIN_TASKS: dict[str, type[BuiltinTask]] = {"arith": Arith, "countdown": Countdown}


def get_task(name: str) -> Task:
    """A task by name (`arith`, `countdown`) or by the path of a JSONL file of problems."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]()
    if name.endswith(".jsonl") or Path(name).is_file():
        if not Path(name).is_file():
            raise TTScaleError(f"task file {name!r} does not exist")
        from ttscale.tasks.jsonl import JsonlTask

        return JsonlTask(name)
    raise unknown("task", name, [*BUILTIN_TASKS, "a .jsonl file"])


__all__ = ["BUILTIN_TASKS", "LEVELS", "SPLITS", "BuiltinTask", "Task", "get_task", "split_of"]
