"""The thinking-effort knob: a short mode (one line per operation) and a long, step-checkable mode.

The prompt selects the mode. A built-in problem asked as ``Q: <question>\\n`` gets today's short
chain; asked as ``Think: <question>\\n`` it gets the long chain, in which every operation is taken
apart into steps small enough to check one by one (digit by digit for `arith`, a search with dead
ends and backtracking for `countdown`; see `tasks/long_arith.py` and `tasks/long_countdown.py`).
Effort is a transformation of the problem made once, before any strategy runs, so every strategy,
the sweep and the server only carry the string.

A third form leaves the choice to the model: asked as ``Auto: <question>\\n``, the completion's
first line names the mode it takes (``low`` or ``high``) and the chain of that mode follows. The
choice comes after the question, so a model can think longer on the problems that need it; RL
(`train/rl.py`, effort "auto") trains that choice by what each mode earns.
"""
from __future__ import annotations

from dataclasses import replace

from ttscale.errors import TTScaleError, unknown
from ttscale.types import Problem

EFFORTS = ("low", "high", "auto")
LOW_PREFIX = "Q: "
HIGH_PREFIX = "Think: "
AUTO_PREFIX = "Auto: "
MODE_LINES = {"low": "low\n", "high": "high\n"}  # an auto completion's first line
LONG_MODE_TASKS = ("arith", "countdown")
LONG_MAX_TOKENS = 768  # the longest long-mode reference solution (arith level 5) is about 510
LONG_MAX_DEPTH = 64  # steps of a long-mode chain for a tree search: arith level 5 takes up to about 50 lines


def max_tokens_for(effort: str, short_default: int) -> int:
    """A token limit that leaves room for the chains of `effort`."""
    return short_default if check_effort(effort) == "low" else max(short_default, LONG_MAX_TOKENS)


def check_effort(effort: str) -> str:
    """`effort` itself, or a TTScaleError naming it and the accepted values."""
    if effort not in EFFORTS:
        raise unknown("effort", effort, EFFORTS)
    return effort


def effort_of(prompt: str) -> str:
    """The effort a prompt asks for."""
    return "high" if prompt.startswith(HIGH_PREFIX) else "auto" if prompt.startswith(AUTO_PREFIX) else "low"


def chosen_mode(completion: str) -> str | None:
    """The mode an auto completion chose on its first line ("low" / "high"), or None if neither."""
    return next((m for m, line in MODE_LINES.items() if completion.startswith(line)), None)


def steps_in_mode(prompt: str, steps: list[str]) -> tuple[str | None, list[str]]:
    """(mode, the steps of its chain) of a solution to `prompt`: an auto solution's mode line is
    taken off; an auto solution that names no mode is (None, steps)."""
    effort = effort_of(prompt)
    if effort != "auto":
        return effort, steps
    mode = chosen_mode(steps[0] + "\n") if steps else None
    return (mode, steps[1:]) if mode else (None, steps)


def apply_effort(problem: Problem, effort: str) -> Problem:
    """`problem` as asked at `effort`: unchanged for "low", the long-mode prompt for "high", the
    prompt that leaves the mode to the model for "auto" (its reference solution takes the long
    mode). A problem already asked in another mode keeps it."""
    check_effort(effort)
    if effort == "low" or effort_of(problem.prompt) != "low":
        return problem
    if problem.task not in LONG_MODE_TASKS or not problem.prompt.startswith(LOW_PREFIX):
        raise TTScaleError(f"effort {effort!r} needs a task with a long mode ({', '.join(LONG_MODE_TASKS)}); "
                           f"task {problem.task!r} has only effort 'low'")
    from ttscale.tasks import BUILTIN_TASKS  # here: the task modules import this one

    task = BUILTIN_TASKS[problem.task]()
    question = problem.prompt[len(LOW_PREFIX):]
    long = task.long_solution(problem)
    if effort == "auto":
        return replace(problem, prompt=AUTO_PREFIX + question, solution=MODE_LINES["high"] + long,
                       meta={**problem.meta, "effort": "auto"})
    return replace(problem, prompt=HIGH_PREFIX + question, solution=long, meta={**problem.meta, "effort": "high"})
