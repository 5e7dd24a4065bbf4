"""`arith`: evaluate an integer expression, one operation per step.

A solution rewrites the expression once per operation, the leftmost multiplication first, then
additions and subtractions left to right::

    Q: 3+4*2-5
    =3+8-5
    =11-5
    =6
    A: 6

Difficulty grows with the number of operations and the operand size.
"""
from __future__ import annotations

import random
import re

from ttscale.tasks import long_arith
from ttscale.tasks.base import ANSWER_PREFIX, BuiltinTask
from ttscale.types import Problem

# level -> (operations, largest operand, largest intermediate value)
LEVEL_PARAMS = {1: (2, 19, 199), 2: (3, 59, 1999), 3: (4, 69, 2999), 4: (5, 69, 2999), 5: (6, 69, 2999)}
_INT = re.compile(r"^\s*(-?\d{1,12})\s*$")
_TOKENS = re.compile(r"\d+|[-+*]")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _next_op(ops: list[str]) -> int:
    """Index of the operation performed next: leftmost `*`, else leftmost."""
    return ops.index("*") if "*" in ops else 0


def _render(nums: list[int], ops: list[str]) -> str:
    return str(nums[0]) + "".join(op + str(n) for op, n in zip(ops, nums[1:]))


def _value(nums: list[int], ops: list[str]) -> int:
    nums, ops = list(nums), list(ops)
    while ops:
        i = _next_op(ops)
        nums[i: i + 2] = [_apply(nums[i], ops[i], nums[i + 1])]
        del ops[i]
    return nums[0]


def _parse_expr(text: str) -> tuple[list[int], list[str]] | None:
    """Numbers and operators of a flat expression like `3+8-5`, or None if it is not one."""
    text = text.strip()
    if len(text) > 200 or not re.fullmatch(r"\d{1,12}(?:[-+*]\d{1,12})*", text):
        return None
    toks = _TOKENS.findall(text)
    return [int(t) for t in toks[0::2]], toks[1::2]


class Arith(BuiltinTask):
    name = "arith"
    description = "evaluate an integer expression (+ - *), one operation per step"

    def generate(self, rng: random.Random, level: int) -> Problem:
        n_ops, max_operand, max_value = LEVEL_PARAMS[level]
        while True:
            nums = [rng.randint(1, max_operand) for _ in range(n_ops + 1)]
            ops = [rng.choice("+-*") for _ in range(n_ops)]
            lines = self._reductions(nums, ops, max_value)
            if lines is not None:
                break
        question = _render(nums, ops)
        answer = lines[-1][1:]
        solution = "".join(line + "\n" for line in lines) + f"{ANSWER_PREFIX}{answer}\n"
        return Problem(id="", task=self.name, level=level, question=question,
                       prompt=f"Q: {question}\n", answer=answer, solution=solution)

    @staticmethod
    def _reductions(nums: list[int], ops: list[str], max_value: int) -> list[str] | None:
        nums, ops = list(nums), list(ops)
        lines = []
        while ops:
            i = _next_op(ops)
            v = _apply(nums[i], ops[i], nums[i + 1])
            if not 0 <= v <= max_value:
                return None
            nums[i: i + 2] = [v]
            del ops[i]
            lines.append("=" + _render(nums, ops))
        return lines

    def check(self, problem: Problem, answer: str | None) -> bool:
        if answer is None:
            return False
        m = _INT.match(answer)
        return bool(m) and int(m.group(1)) == int(problem.answer)

    def answer_key(self, answer: str | None) -> str | None:
        if answer is None:
            return None
        m = _INT.match(answer)
        return str(int(m.group(1))) if m else answer.strip()

    def long_solution(self, problem: Problem, rng: random.Random | None = None) -> str:
        """The long-mode (`effort="high"`) solution; `rng` draws the decompositions."""
        state = _parse_expr(problem.question)
        assert state is not None
        return long_arith.long_solution(*state, rng=rng)

    def check_chain(self, problem: Problem, mode: str, steps: list[str]) -> list[bool]:
        state = _parse_expr(problem.question)
        assert state is not None
        if mode == "high":
            return long_arith.check_long_steps(*state, steps)
        target = int(problem.answer)
        verdicts: list[bool] = []
        ok = True
        for step in steps:
            step = step.strip()
            if ok and step.startswith("A:"):
                ok = self.check(problem, self.extract_answer(step)) and len(state[1]) == 0
            elif ok and step.startswith("="):
                new = _parse_expr(step[1:])
                ok = new is not None and _is_one_reduction(state, new) and _value(*new) == target
                if ok:
                    state = new
            else:
                ok = False
            verdicts.append(ok)
        return verdicts


def _is_one_reduction(old: tuple[list[int], list[str]], new: tuple[list[int], list[str]]) -> bool:
    """`new` is `old` with one adjacent `a op b` replaced by its (correct) value."""
    (on, oo), (nn, no) = old, new
    if len(no) != len(oo) - 1:
        return False
    for i, op in enumerate(oo):
        if (oo[:i] + oo[i + 1:] == no and on[:i] + on[i + 2:] == nn[:i] + nn[i + 1:]
                and nn[i] == _apply(on[i], op, on[i + 1])):
            return True
    return False
