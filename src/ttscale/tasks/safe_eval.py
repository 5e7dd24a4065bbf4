"""A small, bounded evaluator for integer arithmetic read from model output.

Model output is untrusted: it is parsed by a recursive-descent parser over + - * / and
parentheses on exact rationals, never by `eval`. Length, nesting depth, digits per number and
the magnitude of every intermediate value are bounded, so hostile input (huge powers, deep
nesting, junk) is rejected quickly with a reason instead of hanging or exhausting memory.
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

    def expr(self, depth: int) -> Fraction:
        v = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            self.ops += 1
            v = self.check(v + rhs if op == "+" else v - rhs)
        return v

    def term(self, depth: int) -> Fraction:
        v = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            self.ops += 1
            if op == "/":
                if rhs == 0:
                    raise UnsafeExpression("division by zero")
                v = self.check(v / rhs)
            else:
                v = self.check(v * rhs)
        return v

    def factor(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise UnsafeExpression(f"nesting deeper than {MAX_DEPTH}")
        tok = self.take()
        if tok == "(":
            v = self.expr(depth + 1)
            if self.take() != ")":
                raise UnsafeExpression("unbalanced parentheses")
            return v
        if tok == "-":
            return -self.factor(depth + 1)
        if tok.isdigit():
            self.numbers.append(int(tok))
            return Fraction(int(tok))
        raise UnsafeExpression(f"unexpected {tok!r}")


def parse(text: str) -> Parsed:
    """Parse and evaluate `text` exactly; raise UnsafeExpression with a reason on bad input."""
    p = _Parser(_tokenize(text))
    value = p.expr(0)
    if p.peek() is not None:
        raise UnsafeExpression(f"unexpected {p.peek()!r} after the expression")
    return Parsed(value, tuple(p.numbers), p.ops)


def evaluate(text: str) -> Fraction:
    return parse(text).value
