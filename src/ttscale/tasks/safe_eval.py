"""A small, bounded evaluator for integer arithmetic read from model output.

Model output is untrusted: it is parsed by a recursive-descent parser over + - * / and
parentheses on exact rationals, never by `eval`. Length, nesting depth, digits per number and
the magnitude of every intermediate value are bounded, so hostile input (huge powers, deep
nesting, junk) is rejected quickly with a reason instead of hanging or exhausting memory.

The parser also writes each expression's normal form up to commutativity and associativity
(`Parsed.form`): the terms of a sum and the factors of a product, with their signs and
exponents, sorted, so `19+29`, `29+19` and `(29)+19` share one form while `(a+b)*c` and
`a*c+b*c` keep two. Votes use it (`Countdown.answer_key`): the same answer written in another
order is the same answer. It never evaluates against a target, so it is not a checker.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 256
MAX_DEPTH = 16
MAX_DIGITS = 12
MAX_MAGNITUDE = 10**15

_TOKEN = re.compile(r"\s*(?:(\d+)|(\*\*|[-+*/()^]))", re.ASCII)  # ASCII digits only


class UnsafeExpression(ValueError):
    """The expression is malformed, too large or uses something not allowed; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Parsed:
    value: Fraction
    numbers: tuple[int, ...]  # the literals used, in order of appearance
    ops: int  # number of binary operations
    form: str  # the normal form up to commutativity and associativity (module doc)


# A node of the form: a number, or a sum / product of (sign or exponent, node) items.
_Node = tuple


def _form(node: _Node) -> str:
    """The normal form of a node: nested sums (products) flattened into one, items sorted."""
    if node[0] == "n":
        return str(node[1])
    kind, items = node[0], []

    def flatten(sign: int, child: _Node) -> None:
        if child[0] == kind:
            for s, c in child[1]:
                flatten(sign * s, c)
        else:
            items.append((sign, _form(child)))

    flatten(1, node)
    plus, minus, left, right = ("+", "-", "(", ")") if kind == "s" else ("*", "/", "[", "]")
    return left + "".join(sorted((plus if s > 0 else minus) + f for s, f in items)) + right


def _combine(kind: str, items: list[tuple[int, _Node]]) -> _Node:
    return items[0][1] if len(items) == 1 and items[0][0] == 1 else (kind, items)


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise UnsafeExpression(f"expression longer than {MAX_CHARS} characters ({len(text)})")
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if not m:
            raise UnsafeExpression(f"unexpected character {stripped[pos:].lstrip()[:1]!r} at {pos}")
        tok = m.group(1) or m.group(2)
        if tok in ("**", "^"):
            raise UnsafeExpression("powers are not allowed; use + - * / and parentheses")
        if m.group(1) and len(tok) > MAX_DIGITS:
            raise UnsafeExpression(f"number with more than {MAX_DIGITS} digits")
        tokens.append(tok)
        pos = m.end()
    if not tokens:
        raise UnsafeExpression("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.i = 0
        self.numbers: list[int] = []
        self.ops = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise UnsafeExpression("expression ends early")
        self.i += 1
        return tok

    def check(self, v: Fraction) -> Fraction:
        if abs(v) > MAX_MAGNITUDE:
            raise UnsafeExpression(f"intermediate value exceeds {MAX_MAGNITUDE:.0e}")
        return v

    # each rule returns (value, node of the normal form)
    def expr(self, depth: int) -> tuple[Fraction, _Node]:
        v, node = self.term(depth)
        items = [(1, node)]
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs, rnode = self.term(depth)
            self.ops += 1
            v = self.check(v + rhs if op == "+" else v - rhs)
            items.append((1 if op == "+" else -1, rnode))
        return v, _combine("s", items)

    def term(self, depth: int) -> tuple[Fraction, _Node]:
        v, node = self.factor(depth)
        items = [(1, node)]
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs, rnode = self.factor(depth)
            self.ops += 1
            if op == "/":
                if rhs == 0:
                    raise UnsafeExpression("division by zero")
                v = self.check(v / rhs)
            else:
                v = self.check(v * rhs)
            items.append((1 if op == "*" else -1, rnode))
        return v, _combine("p", items)

    def factor(self, depth: int) -> tuple[Fraction, _Node]:
        if depth > MAX_DEPTH:
            raise UnsafeExpression(f"nesting deeper than {MAX_DEPTH}")
        tok = self.take()
        if tok == "(":
            v = self.expr(depth + 1)
            if self.take() != ")":
                raise UnsafeExpression("unbalanced parentheses")
            return v
        if tok == "-":
            v, node = self.factor(depth + 1)
            return -v, ("s", [(-1, node)])
        if tok.isdigit():
            self.numbers.append(int(tok))
            return Fraction(int(tok)), ("n", int(tok))
        raise UnsafeExpression(f"unexpected {tok!r}")


def parse(text: str) -> Parsed:
    """Parse and evaluate `text` exactly; raise UnsafeExpression with a reason on bad input."""
    p = _Parser(_tokenize(text))
    value, node = p.expr(0)
    if p.peek() is not None:
        raise UnsafeExpression(f"unexpected {p.peek()!r} after the expression")
    return Parsed(value, tuple(p.numbers), p.ops, _form(node))


def evaluate(text: str) -> Fraction:
    return parse(text).value
