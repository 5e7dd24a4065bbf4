"""The task oracle as a scorer: exact final-answer check, exact step check for built-in tasks.

A complete solution (one with an `A:` line, or any solution of a task without a step oracle)
scores 1.0 when its final answer is right and 0.0 otherwise. Each step scores 1.0 while the
solution is still on a path to the right answer and 0.0 from its first wrong step on, so a
partial solution (as tree search scores them) gets the aggregate of its step scores.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from ttscale.rewards.aggregate import aggregate, check_aggregate
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.tasks.base import Task
from ttscale.types import Completion, Problem, Usage

_ANSWER_LINE = re.compile(r"^\s*A:", re.MULTILINE)


def is_complete(text: str) -> bool:
    """Whether a solution has stated its final answer (an `A:` line)."""
    return bool(_ANSWER_LINE.search(text))


class OracleScorer:
    """Exact checking with the task's own verifier; costs no verifier compute."""

    name = "oracle"

    def __init__(self, task: Task, aggregate: str = "last") -> None:
        self.task = task
        self.aggregate = check_aggregate(aggregate)

    def score_one(self, problem: Problem, text: str) -> Scored:
        steps: list[float] = []
        if self.task.has_step_oracle:
            verdicts = self.task.check_steps(problem, self.task.split_steps(text))
            steps = [1.0 if v else 0.0 for v in verdicts]
            if not is_complete(text):
                return Scored(aggregate(steps, self.aggregate), steps)
        return Scored(1.0 if self.task.is_correct(problem, text) else 0.0, steps)

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        return ScoreBatch([self.score_one(problem, s) for s in solutions], Usage())
