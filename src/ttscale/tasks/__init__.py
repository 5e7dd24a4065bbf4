"""Task families: built-in generated tasks with exact verifiers, and JSONL tasks for real data."""
from __future__ import annotations

from pathlib import Path

from ttscale.errors import TTScaleError, unknown
from ttscale.tasks.arith import Arith
from ttscale.tasks.base import LEVELS, SPLITS, BuiltinTask, Task, split_of
from ttscale.tasks.countdown import Countdown

BUILTIN_TASKS: dict[str, type[BuiltinTask]] = {"arith": Arith, "countdown": Countdown}


def get_task(name: str, shots: int = 0, shots_from: str | None = None) -> Task:
    """A task by name (`arith`, `countdown`) or by the path of a JSONL file of problems;
    `shots`/`shots_from`: few-shot prompts for base models (JSONL tasks only)."""
    if name in BUILTIN_TASKS:
        if shots or shots_from:
            raise TTScaleError(f"shots={shots} is for JSONL tasks (GSM8K, MATH), not the "
                               f"built-in {name!r}, whose prompts are the models' own format")
        return BUILTIN_TASKS[name]()
    if name.endswith(".jsonl") or Path(name).is_file():
        if not Path(name).is_file():
            raise TTScaleError(f"task file {name!r} does not exist")
        from ttscale.tasks.jsonl import JsonlTask

        return JsonlTask(name, shots=shots, shots_from=shots_from)
    raise unknown("task", name, [*BUILTIN_TASKS, "a .jsonl file"])


__all__ = ["BUILTIN_TASKS", "LEVELS", "SPLITS", "BuiltinTask", "Task", "get_task", "split_of"]
