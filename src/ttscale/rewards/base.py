"""The Scorer protocol: score whole solutions and each of their steps."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ttscale.types import Completion, Problem, Usage


@dataclass
class Scored:
    """A scorer's verdict on one (partial) solution: one score per step and the aggregate."""

    value: float
    steps: list[float] = field(default_factory=list)


@dataclass
class ScoreBatch:
    scores: list[Scored]
    usage: Usage  # what the verifier computed (tokens, FLOPs); zero for the oracle


@runtime_checkable
class Scorer(Protocol):
    """Scores solutions of `problem`. `solutions` are completion texts (after the prompt);
    `completions`, when given, carry the policy's logprobs (self-certainty needs them)."""

    name: str

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch: ...
