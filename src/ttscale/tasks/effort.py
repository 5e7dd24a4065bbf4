"""The thinking-effort knob: a short mode (one line per operation) and a long, step-checkable mode.

The prompt selects the mode. A built-in problem asked as ``Q: <question>\\n`` gets today's short
chain; asked as ``Think: <question>\\n`` it gets the long chain, in which every operation is taken
apart into steps small enough to check one by one (digit by digit for `arith`, a search with dead
ends and backtracking for `countdown`; see `tasks/long_arith.py` and `tasks/long_countdown.py`).
Effort is a transformation of the problem made once, before any strategy runs, so every strategy,
the sweep and the server only carry the string.
"""
from __future__ import annotations

from dataclasses import replace

from ttscale.errors import TTScaleError, unknown
from ttscale.types import Problem

EFFORTS = ("low", "high")
LOW_PREFIX = "Q: "
HIGH_PREFIX = "Think: "
LONG_MODE_TASKS = ("arith", "countdown")
LONG_MAX_TOKENS = 768  # the longest long-mode reference solution (arith level 5) is about 510


def max_tokens_for(effort: str, short_default: int) -> int:
    """A token limit that leaves room for the chains of `effort`."""
    return max(short_default, LONG_MAX_TOKENS) if check_effort(effort) == "high" else short_default


def check_effort(effort: str) -> str:
    """`effort` itself, or a TTScaleError naming it and the accepted values."""
    if effort not in EFFORTS:
        raise unknown("effort", effort, EFFORTS)
    return effort


def effort_of(prompt: str) -> str:
    """The effort a prompt asks for."""
    return "high" if prompt.startswith(HIGH_PREFIX) else "low"


def apply_effort(problem: Problem, effort: str) -> Problem:
    """`problem` as asked at `effort`: unchanged for "low", the long-mode prompt for "high"."""
    check_effort(effort)
    if effort == "low" or effort_of(problem.prompt) == "high":
        return problem
    if problem.task not in LONG_MODE_TASKS or not problem.prompt.startswith(LOW_PREFIX):
        raise TTScaleError(f"effort 'high' needs a task with a long mode ({', '.join(LONG_MODE_TASKS)}); "
                           f"task {problem.task!r} has only effort 'low'")
    from ttscale.tasks import BUILTIN_TASKS  # here: the task modules import this one

    task = BUILTIN_TASKS[problem.task]()
    return replace(problem, prompt=HIGH_PREFIX + problem.prompt[len(LOW_PREFIX):],
                   solution=task.long_solution(problem), meta={**problem.meta, "effort": "high"})
