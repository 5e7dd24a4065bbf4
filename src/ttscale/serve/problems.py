"""A request's prompt as a Problem, with its task inferred, so that strategies can run on it.

`Q: 3 5 2 -> 16` is a countdown problem, `Q: 3+4*2` an arith problem (both with exact
verifiers, so the `oracle` scorer works); anything else is a generic problem whose answers are
read with the `A:` convention and which no oracle can check.
"""
from __future__ import annotations

import hashlib
import re

from ttscale.tasks.arith import Arith
from ttscale.tasks.base import Task
from ttscale.tasks.countdown import Countdown
from ttscale.tasks.safe_eval import UnsafeExpression, evaluate
from ttscale.types import Problem

_COUNTDOWN = re.compile(r"^(?:Q:\s*)?((?:\d{1,6} ){1,7}\d{1,6}) -> (\d{1,9})$")
_ARITH = re.compile(r"^(?:Q:\s*)?(\d{1,12}(?:[-+*]\d{1,12}){1,12})$")


class GenericTask(Task):
    """Free-form prompts: answers follow `A:`; nothing can check them without a reference."""

    name = "generic"
    description = "a free-form prompt; the answer is the last 'A:' line"
    has_step_oracle = False

    def problems(self, split: str = "test", level: int | None = None, n: int = 100,
                 seed: int = 0) -> list[Problem]:
        return []

    def check(self, problem: Problem, answer: str | None) -> bool:
        return False


def problem_from_prompt(prompt: str) -> tuple[Problem, Task]:
    """The Problem a prompt states, and its task (countdown, arith or generic)."""
    pid = "req-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]
    text = prompt.strip()
    m = _COUNTDOWN.match(text)
    if m:
        question = f"{m.group(1)} -> {m.group(2)}"
        numbers = [int(x) for x in m.group(1).split()]
        return Problem(pid, "countdown", 0, question, f"Q: {question}\n", m.group(2),
                       meta={"numbers": numbers, "target": int(m.group(2))}), Countdown()
    m = _ARITH.match(text)
    if m:
        try:
            value = evaluate(m.group(1))
        except UnsafeExpression:
            value = None
        if value is not None and value.denominator == 1:
            question = m.group(1)
            return Problem(pid, "arith", 0, question, f"Q: {question}\n",
                           str(int(value))), Arith()
    return Problem(pid, "generic", 0, text, prompt, ""), GenericTask()
