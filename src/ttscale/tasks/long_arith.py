"""The long mode of `arith`: every operation taken apart into steps a small model can check.

A short-mode step rewrites the expression after one whole operation (``=3886+123``), so checking
it is as hard as computing 67*58. The long mode writes the same rewrite lines, but before each
one it works the operation out digit by digit, one line per digit, each line a one-digit fact
that can be checked on its own::

    Think: 67*58+123
    67*58=67*8+67*50        the decomposition (a choice: also 7*58+60*58)
    7*8=56                  digit by digit: 67*8
    6*8+5=53                (+5: the carry of the line above)
    67*8=536
    7*5=35
    6*5+3=33
    67*50=3350
    6+0=6                   column addition of the two partial products
    3+5=8
    5+3=8
    0+3=3
    536+3350=3886
    =3886+123               the short mode's rewrite line
    6+3=9
    ...
    3886+123=4009
    =4009
    A: 4009

Column additions pad the shorter number with 0 and write a carry as ``+1``; a column
subtraction that borrows writes the digit with its ten (``16-9=7``) and the next column pays
the borrow as ``-1``. A multiplication of two numbers >= 10 has two decompositions: by the
digits of the right operand, or (when the left one has two digits) of the left one, so that
samples can take paths whose hard parts differ. Everything else is determined, which makes the
step oracle exact: a step is right while the trace is a prefix of a valid trace.
"""
from __future__ import annotations

import random

from ttscale.tasks.base import ANSWER_PREFIX


def _digits(x: int) -> list[int]:
    """Digits of x, least significant first."""
    return [int(c) for c in reversed(str(x))]


def times_digit(x: int, d: int) -> list[str]:
    """Lines of x * d (d one digit), digit by digit from the right, without the result line."""
    lines, carry = [], 0
    for xd in _digits(x):
        lines.append(f"{xd}*{d}" + (f"+{carry}" if carry else "") + f"={xd * d + carry}")
        carry = (xd * d + carry) // 10
    return lines


def column_add(x: int, y: int) -> list[str]:
    """Column lines of x + y, right to left, the shorter number padded with 0."""
    dx, dy = _digits(x), _digits(y)
    n = max(len(dx), len(dy))
    dx, dy = dx + [0] * (n - len(dx)), dy + [0] * (n - len(dy))
    lines, carry = [], 0
    for a, b in zip(dx, dy):
        s = a + b + carry
        lines.append(f"{a}+{b}" + ("+1" if carry else "") + f"={s}")
        carry = s // 10
    return lines


def column_sub(x: int, y: int) -> list[str]:
    """Column lines of x - y (x >= y), right to left, borrowing where a column goes negative."""
    dx, dy = _digits(x), _digits(y)
    dy += [0] * (len(dx) - len(dy))
    lines, borrow = [], 0
    for a, b in zip(dx, dy):
        r = a - b - borrow
        ten = "1" if r < 0 else ""
        lines.append(f"{ten}{a}-{b}" + ("-1" if borrow else "") + f"={r + 10 if r < 0 else r}")
        borrow = 1 if r < 0 else 0
    return lines


def decompositions(a: int, b: int) -> list[list[tuple[int, int, int]]]:
    """The ways to split a*b (both >= 10) into partial products (multi-digit factor, digit, power).

    A partial (x, d, k) is x * d * 10**k. First by the digits of b, then, when a has two digits,
    by the digits of a. Zero digits give no partial.
    """
    by_b = [(a, d, k) for k, d in enumerate(_digits(b)) if d]
    ways = [by_b]
    if a < 100:
        by_a = [(b, d, k) for k, d in enumerate(_digits(a)) if d]
        ways.append(by_a)
    return ways


def _partial_text(a: int, b: int, way_index: int, x: int, d: int, k: int) -> str:
    """How a partial is written: in the order of the original factors (67*50, 60*58)."""
    factor = d * 10**k
    return f"{a}*{factor}" if way_index == 0 else f"{factor}*{b}"


def operation_lines(a: int, op: str, b: int, way: int = 0) -> list[str]:
    """The long-mode lines that compute `a op b`, ending with the line `a op b = value`.

    `way` picks the decomposition of a multiplication of two numbers >= 10 (see decompositions).
    """
    if op == "+":
        return ([] if a < 10 and b < 10 else column_add(a, b)) + [f"{a}+{b}={a + b}"]
    if op == "-":
        return ([] if a < 10 and b < 10 else column_sub(a, b)) + [f"{a}-{b}={a - b}"]
    if a < 10 and b < 10:
        return [f"{a}*{b}={a * b}"]
    if a < 10 or b < 10:
        x, d = (a, b) if b < 10 else (b, a)
        return times_digit(x, d) + [f"{a}*{b}={a * b}"]
    ways = decompositions(a, b)
    parts = ways[way]
    texts = [_partial_text(a, b, way, *p) for p in parts]
    lines = [f"{a}*{b}=" + "+".join(texts)] if len(parts) > 1 else []
    values = []
    for text, (x, d, k) in zip(texts, parts):
        lines += times_digit(x, d) + [f"{text}={x * d * 10**k}"]
        values.append(x * d * 10**k)
    total = values[0]
    for v in values[1:]:
        lines += column_add(total, v) + [f"{total}+{v}={total + v}"]
        total += v
    return lines


def n_ways(a: int, op: str, b: int) -> int:
    """How many different line sequences `operation_lines` has for this operation."""
    return len(decompositions(a, b)) if op == "*" and a >= 10 and b >= 10 else 1


def long_solution(nums: list[int], ops: list[str], rng: random.Random | None = None) -> str:
    """The long-mode solution; `rng` draws each decomposition (None: always the first)."""
    from ttscale.tasks.arith import _apply, _next_op, _render  # the short mode's rules

    nums, ops = list(nums), list(ops)
    lines: list[str] = []
    while ops:
        i = _next_op(ops)
        a, op, b = nums[i], ops[i], nums[i + 1]
        way = rng.randrange(n_ways(a, op, b)) if rng else 0
        lines += operation_lines(a, op, b, way)
        nums[i: i + 2] = [_apply(a, op, b)]
        del ops[i]
        lines.append("=" + _render(nums, ops))
    return "".join(line + "\n" for line in lines) + f"{ANSWER_PREFIX}{nums[0]}\n"


def check_long_steps(nums: list[int], ops: list[str], steps: list[str]) -> list[bool]:
    """Oracle verdict per step of a long-mode trace: still a prefix of some valid trace?"""
    from ttscale.tasks.arith import _apply, _next_op, _render

    nums, ops = list(nums), list(ops)
    verdicts: list[bool] = []
    ways: list[list[str]] = []  # the current operation's valid line sequences still matched
    ok = True
    for raw in steps:
        step = raw.strip()
        if ok and not ways:
            if not ops:
                ok = step == f"{ANSWER_PREFIX}{nums[0]}"
                verdicts.append(ok)
                continue
            i = _next_op(ops)
            a, op, b = nums[i], ops[i], nums[i + 1]
            nums[i: i + 2] = [_apply(a, op, b)]
            del ops[i]
            rewrite = "=" + _render(nums, ops)
            ways = [operation_lines(a, op, b, w) + [rewrite] for w in range(n_ways(a, op, b))]
        if ok:
            ways = [w[1:] for w in ways if w[0] == step]
            ok = bool(ways)
            if any(not w for w in ways):  # the rewrite line closed the operation
                ways = []
        verdicts.append(ok)
    return verdicts
