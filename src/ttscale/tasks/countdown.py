"""`countdown`: reach a target from given numbers with + - * /, one operation per step.

Every number is used exactly once; many solutions are valid. A solution::

    Q: 3 5 2 -> 16
    5+3=8
    8*2=16
    A: (5+3)*2

The final expression is read with the safe evaluator (never `eval`), so hostile answers are
rejected quickly with a reason.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction
from functools import lru_cache

from ttscale.tasks import long_countdown
from ttscale.tasks.base import ANSWER_PREFIX, BuiltinTask, Task
from ttscale.tasks.safe_eval import UnsafeExpression, parse
from ttscale.types import Problem

# level -> (how many numbers, largest number, largest target)
LEVEL_PARAMS = {1: (2, 30, 199), 2: (3, 9, 99), 3: (3, 19, 199), 4: (4, 9, 99), 5: (5, 9, 199)}
_STEP = re.compile(r"^\s*(\d{1,6})\s*([-+*/])\s*(\d{1,6})\s*=\s*(-?\d{1,12})\s*$")
_PROMPT = re.compile(r"^(?:Q|Think|Auto): ([\d ]+) -> (\d+)\n$")


def _apply(a: int, op: str, b: int) -> Fraction | None:
    if op == "+":
        return Fraction(a + b)
    if op == "-":
        return Fraction(a - b)
    if op == "*":
        return Fraction(a * b)
    return Fraction(a, b) if b != 0 else None


@lru_cache(maxsize=200_000)
def reachable(pool: tuple[int, ...], target: int) -> bool:
    """Whether `target` can be made from all numbers of `pool`, each used once (integer steps)."""
    if len(pool) == 1:
        return pool[0] == target
    for i in range(len(pool)):
        for j in range(len(pool)):
            if i == j:
                continue
            rest = [pool[k] for k in range(len(pool)) if k not in (i, j)]
            for op in "+-*/":
                if op in "+*" and i > j:
                    continue  # commutative: try each unordered pair once
                v = _apply(pool[i], op, pool[j])
                if v is None or v.denominator != 1 or abs(v) > 10**6:
                    continue
                if reachable(tuple(sorted(rest + [int(v)])), target):
                    return True
    return False


def _wrap(expr: str) -> str:
    return f"({expr})" if any(c in expr for c in "+-*/") else expr


def compose(steps: list[tuple[int, str, int, int]]) -> str | None:
    """The single expression that a list of `a op b = c` steps computes."""
    made: list[tuple[int, str]] = []  # (value, expression) produced and not yet used
    for a, op, b, c in steps:
        parts = []
        for x in (a, b):
            idx = next((k for k in range(len(made) - 1, -1, -1) if made[k][0] == x), None)
            parts.append(_wrap(made.pop(idx)[1]) if idx is not None else str(x))
        made.append((c, f"{parts[0]}{op}{parts[1]}"))
    return made[-1][1] if made else None


def parse_steps(text: str) -> list[tuple[int, str, int, int]]:
    out = []
    for line in text.split("\n"):
        m = _STEP.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))))
    return out


class Countdown(BuiltinTask):
    name = "countdown"
    description = "reach a target from given numbers with + - * /, each number used once"
    answer_checkable = True  # numbers and target are in the prompt; no reference needed

    def generate(self, rng: random.Random, level: int) -> Problem:
        count, max_number, max_target = LEVEL_PARAMS[level]
        while True:
            numbers = [rng.randint(1, max_number) for _ in range(count)]
            pool = [(n, str(n)) for n in numbers]
            steps: list[str] = []
            while len(pool) > 1:
                i, j = rng.sample(range(len(pool)), 2)
                (a, ea), (b, eb) = pool[i], pool[j]
                choices = [op for op in "+-*/" if self._nice(a, op, b, max_target)]
                if not choices:
                    break
                op = rng.choice(choices)
                c = int(_apply(a, op, b))
                steps.append(f"{a}{op}{b}={c}")
                pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [
                    (c, f"{_wrap(ea)}{op}{_wrap(eb)}")]
            if len(pool) == 1 and pool[0][0] not in numbers:
                break
        target, expr = pool[0]
        question = " ".join(map(str, numbers)) + f" -> {target}"
        solution = "".join(s + "\n" for s in steps) + f"{ANSWER_PREFIX}{expr}\n"
        return Problem(id="", task=self.name, level=level, question=question,
                       prompt=f"Q: {question}\n", answer=str(target), solution=solution,
                       meta={"numbers": numbers, "target": target})

    @staticmethod
    def _nice(a: int, op: str, b: int, max_target: int) -> bool:
        """Operations the generator uses: positive integer results within bounds."""
        v = _apply(a, op, b)
        if v is None or v.denominator != 1 or not 0 < v <= max_target:
            return False
        return not (op == "/" and b == 1) and not (op == "*" and 1 in (a, b))

    @staticmethod
    def numbers_and_target(problem: Problem) -> tuple[list[int], int]:
        m = _PROMPT.match(problem.prompt)
        if not m:
            raise ValueError(f"not a countdown prompt: {problem.prompt!r}")
        return [int(x) for x in m.group(1).split()], int(m.group(2))

    def extract_answer(self, completion: str) -> str | None:
        stated = super().extract_answer(completion)
        if stated:
            return stated
        return compose(parse_steps(completion))

    def explain(self, problem: Problem, answer: str | None) -> str | None:
        """Why `answer` is wrong, or None when it is right."""
        if answer is None:
            return "no answer"
        try:
            parsed = parse(answer)
        except UnsafeExpression as e:
            return e.reason
        numbers, target = self.numbers_and_target(problem)
        if Counter(parsed.numbers) != Counter(numbers):
            return f"uses {sorted(parsed.numbers)}, must use each of {sorted(numbers)} once"
        if parsed.value != target:
            return f"evaluates to {parsed.value}, not {target}"
        return None

    def check(self, problem: Problem, answer: str | None) -> bool:
        return self.explain(problem, answer) is None

    def answer_key(self, answer: str | None) -> str | None:
        """The expression's normal form up to commutativity and associativity (`19+29` and
        `29+19` vote together; safe_eval's module doc); unparsable answers as written."""
        if answer is None:
            return None
        try:
            return parse(answer).form
        except UnsafeExpression:
            return answer.strip()

    def long_solution(self, problem: Problem, rng: random.Random | None = None) -> str:
        """The long-mode (`effort="high"`) search trace; `rng` draws its dead ends (None: none)."""
        numbers, target = self.numbers_and_target(problem)
        answer = Task.extract_answer(self, problem.solution or "")
        max_value = LEVEL_PARAMS[problem.level][2] if problem.level in LEVEL_PARAMS else 999
        return long_countdown.long_solution(numbers, target, parse_steps(problem.solution or ""),
                                            answer or "", rng=rng, max_value=max_value)

    def check_chain(self, problem: Problem, mode: str, steps: list[str]) -> list[bool]:
        pool, target = self.numbers_and_target(problem)
        if mode == "high":
            return long_countdown.check_long_steps(pool, target, steps,
                                                   lambda expr: self.check(problem, expr))
        pool = list(pool)
        verdicts: list[bool] = []
        ok = True
        for step in steps:
            if ok and step.strip().startswith("A:"):
                ok = self.check(problem, super().extract_answer(step))
            elif ok:
                m = _STEP.match(step)
                ok = m is not None
                if ok:
                    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                    v = _apply(a, op, b)
                    rest = list(pool)
                    ok = v is not None and v == c
                    for x in (a, b):
                        if ok and x in rest:
                            rest.remove(x)
                        else:
                            ok = False
                    if ok:
                        pool = rest + [c]
                        ok = reachable(tuple(sorted(pool)), target)
            verdicts.append(ok)
        return verdicts
