"""The `checker` scorer: a final answer checked from the problem alone, as unit tests check code.

Only tasks with `answer_checkable = True` accept it (countdown: the numbers and the target are in
the prompt, so any expression can be checked without a reference). The scorer never reads the
reference answer or solution: it checks against a copy of the problem with both removed. It is
deployable, runs no model (zero FLOPs) and reports the CPU time it measured as `Usage.cpu_s`.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from ttscale.errors import TTScaleError
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.tasks.base import Task
from ttscale.types import Completion, Problem, Usage


def checkable_tasks() -> list[str]:
    """Names of the built-in tasks whose final answer the checker can verify."""
    from ttscale.tasks import BUILTIN_TASKS

    return [name for name, cls in BUILTIN_TASKS.items() if cls.answer_checkable]


def require_checkable(task: Task) -> Task:
    """`task`, or a one-line error naming the tasks the checker accepts."""
    if not getattr(task, "answer_checkable", False):
        raise TTScaleError(f"scorer 'checker' cannot check task {task.name!r} (its answer needs a "
                           f"reference); accepted tasks: {', '.join(checkable_tasks())}")
    return task


def without_reference(problem: Problem) -> Problem:
    """The problem as a deployed checker sees it: no reference answer, no reference solution."""
    return replace(problem, answer="", solution=None)


class CheckerScorer:
    """1.0 when a solution's final answer checks out against the problem statement, else 0.0."""

    name = "checker"

    def __init__(self, task: Task) -> None:
        self.task = require_checkable(task)

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        t0 = time.process_time()
        blind = without_reference(problem)
        scores = [Scored(1.0 if self.task.is_correct(blind, s) else 0.0) for s in solutions]
        return ScoreBatch(scores, Usage(cpu_s=time.process_time() - t0))
