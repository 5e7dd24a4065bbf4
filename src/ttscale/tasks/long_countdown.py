"""The long mode of `countdown`: a search with dead ends and backtracking (Stream-of-Search style).

The short mode writes only the operations of one solution, so a wrong first choice is fatal.
The long mode writes the search: each line applies one operation and lists the numbers left; a
branch that ends in one number is compared with the target, written next to it, and judged
(``17 vs 16 no``), and the search goes ``back`` to a state it has been in, naming its numbers;
the branch that reaches the target says so (``16 vs 16 yes``) and its expression is the answer::

    Think: 3 5 2 -> 16
    5*3=15 left 15 2
    15+2=17 vs 16 no
    back 3 5 2
    5+3=8 left 8 2
    8*2=16 vs 16 yes
    A: (5+3)*2

Training traces (`long_solution`) go back to the given numbers after each dead end, 0 to 4
dead ends drawn uniformly, each attempt starting with a move no earlier attempt started with
(`3+5` and `5+3` count as one). The verdict comes after the two numbers it compares, so it is a
check of adjacent numbers. The earlier format, which the shipped models learned, wrote the
verdict first (``17 != 16``), backed up to any earlier state and explored at most 3 dead ends
along the path; continued on the same data for the same steps, a model trained on this one
samples better long chains (docs/results.md, "Countdown's search traces"). The step oracle
reads both forms.

Every line is a claim that can be checked from the lines above it alone (is the arithmetic right,
were the numbers there, are the numbers left the right ones, is the verdict right), so the step
oracle is exact. A dead end is not an error: the search may explore; an error is a false claim.
Only the ``A:`` line after a ``yes`` is an answer; a dead end never is.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from ttscale.tasks.base import ANSWER_PREFIX

# a move: `a op b=c` then the numbers left, or a leaf's comparison with the target, written
# `c vs T yes|no` (or, as the shipped models learned it, `c ==|!= T`: the verdict before the target)
_OP = re.compile(r"^(\d{1,6})([-+*/])(\d{1,6})=(-?\d{1,12})"
                 r"(?: left((?: \d{1,12})+)| vs (\d{1,12}) (yes|no)| (==|!=) (\d{1,12}))$")
_BACK = re.compile(r"^back((?: \d{1,12})+)$")
Move = tuple[int, str, int, int]  # a, op, b, c: the line `a op b=c`


def _verdict(m: re.Match) -> tuple[int, bool]:
    """The target a leaf line (an `_OP` match without `left`) names and whether it says hit."""
    if m.group(6):
        return int(m.group(6)), m.group(7) == "yes"
    return int(m.group(9)), m.group(8) == "=="


def leaf(line: str) -> tuple[int, int, bool] | None:
    """A leaf of the search, `a op b=c` judged against a target (either verdict form): (c, the
    target it names, whether it says hit); None for any other line."""
    m = _OP.match(line.strip())
    if m is None or m.group(5) is not None:
        return None
    return (int(m.group(4)), *_verdict(m))


_OLD_LEAF = re.compile(r"(?m)^(\d{1,6}[-+*/]\d{1,6}=-?\d{1,12}) (==|!=) (\d{1,12})$")


def current_notation(text: str) -> str:
    """`text` with the older leaf notation (`c ==|!= T`, the verdict first) written as today's
    (`c vs T yes|no`), line for line; other lines unchanged. Both say the same, so a step checker
    trained on today's notation can read the shipped models' older traces (rewards.lm_check)."""
    return _OLD_LEAF.sub(lambda m: f"{m.group(1)} vs {m.group(3)} "
                         + ("yes" if m.group(2) == "==" else "no"), text)


def _value(a: int, op: str, b: int) -> Fraction | None:
    if op == "/":
        return Fraction(a, b) if b else None
    return Fraction(a + b if op == "+" else a - b if op == "-" else a * b)


def _op_line(a: int, op: str, b: int, c: int, rest: list[int], target: int) -> str:
    if rest:
        return f"{a}{op}{b}={c} left " + " ".join(map(str, [c] + rest))
    return f"{a}{op}{b}={c} vs {target} " + ("yes" if c == target else "no")


def _move_key(a: int, op: str, b: int) -> tuple[int, str, int]:
    """A move up to commutativity: `5+3` and `3+5` are the same move."""
    return (min(a, b), op, max(a, b)) if op in "+*" else (a, op, b)


def _apply_to_pool(pool: list[int], a: int, b: int) -> list[int] | None:
    """The pool without one `a` and one `b`, or None when they are not both in it."""
    rest = list(pool)
    for x in (a, b):
        if x not in rest:
            return None
        rest.remove(x)
    return rest


def _dead_end(pool: list[int], target: int, avoid: set[tuple[int, str, int]], rng: random.Random,
              max_value: int) -> list[Move] | None:
    """A random chain of operations from `pool` down to one number other than the target.

    Its first move is none of `avoid` (the moves already tried from `pool`).
    """
    chain = []
    pool = list(pool)
    while len(pool) > 1:
        moves = [(pool[i], op, pool[j]) for i in range(len(pool)) for j in range(len(pool)) if i != j
                 for op in "+-*/"]
        moves = [m for m in moves if chain or _move_key(*m) not in avoid]
        rng.shuffle(moves)
        for a, op, b in moves:
            v = _value(a, op, b)
            if v is not None and v.denominator == 1 and 0 < v <= max_value:
                break
        else:
            return None
        c = int(v)
        chain.append((a, op, b, c))
        pool = _apply_to_pool(pool, a, b) + [c]
    return None if pool[0] == target else chain


def long_solution(numbers: list[int], target: int, path: list[Move], answer: str,
                  rng: random.Random | None = None, max_dead_ends: int = 4,
                  max_value: int = 999) -> str:
    """A search trace that ends on `path` (the steps of a solution) and states `answer`.

    Before the path, a number of dead ends drawn uniformly from 0..`max_dead_ends` (from `rng`;
    None: none): each a random chain from the given numbers down to one number off target, then
    ``back`` to the given numbers. Every attempt starts with a move no earlier one started with.
    """
    lines: list[str] = []
    tried = {_move_key(*path[0][:3])} if path else set()
    for _ in range(rng.randint(0, max_dead_ends) if rng is not None and path else 0):
        chain = _dead_end(numbers, target, tried, rng, max_value)
        if chain is None:
            break
        tried.add(_move_key(*chain[0][:3]))
        lines += _chain_lines(numbers, chain, target)
        lines.append("back " + " ".join(map(str, numbers)))
    lines += _chain_lines(numbers, path, target)
    return "".join(line + "\n" for line in lines) + f"{ANSWER_PREFIX}{answer}\n"


def _chain_lines(numbers: list[int], chain: list[Move], target: int) -> list[str]:
    """The lines of `chain` (moves from `numbers` down to one number), the last one judged."""
    lines, state = [], list(numbers)
    for a, op, b, c in chain:
        state = _apply_to_pool(state, a, b)
        assert state is not None, (numbers, chain)
        lines.append(_op_line(a, op, b, c, state, target))
        state = [c] + state
    return lines


def check_long_steps(numbers: list[int], target: int, steps: list[str], check_answer) -> list[bool]:
    """Oracle verdict per step of a search trace: has every claim so far been true?

    `check_answer(expr)` says whether a stated final answer is right.
    """
    stack: list[list[int]] = [list(numbers)]  # the states of the current branch, root first
    found = False  # the last step reached the target
    dead = False  # the last step ended a branch that missed it
    verdicts: list[bool] = []
    ok = True
    for raw in steps:
        step = raw.strip()
        if ok and step.startswith(ANSWER_PREFIX.strip()):
            ok = found and check_answer(step[len(ANSWER_PREFIX.strip()):].strip())
        elif ok and (m := _BACK.match(step)):
            want = Counter(int(x) for x in m.group(1).split())
            idx = next((i for i in range(len(stack) - 1, -1, -1) if Counter(stack[i]) == want), None)
            ok = idx is not None and not found and (dead or idx < len(stack) - 1)
            if ok:
                del stack[idx + 1:]
                dead = False
        elif ok and (m := _OP.match(step)) and not (found or dead):
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            rest = _apply_to_pool(stack[-1], a, b)
            ok = rest is not None and _value(a, op, b) == c
            if ok and m.group(5) is not None:  # "left ...": the numbers that remain
                ok = Counter(int(x) for x in m.group(5).split()) == Counter(rest + [c]) and bool(rest)
                stack.append(rest + [c])
            elif ok:  # a leaf: its comparison with the target must be right
                said, hit = _verdict(m)
                ok = not rest and said == target and hit == (c == target)
                found, dead = c == target, c != target
        else:
            ok = False
        verdicts.append(ok)
    return verdicts
