"""What every strategy shares: candidates, the Solution it returns, exact cost metering."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError, out_of_range
from ttscale.rewards.base import ScoreBatch, Scorer
from ttscale.types import Completion, Cost, GenerationRequest, GenerationResult, Problem


@dataclass
class Candidate:
    """One complete solution the strategy considered."""

    text: str
    answer: str | None
    score: float | None = None
    step_scores: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Solution:
    """A strategy's result: the chosen answer, every candidate, and the exact cost."""

    answer: str | None
    text: str
    candidates: list[Candidate]
    cost: Cost
    strategy: str
    params: dict[str, Any]
    tree: dict[str, Any] | None = None  # search strategies: the tree, for ttscale's HTML view

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = self.cost.to_dict()
        return d


class Meter:
    """Counts every generator and scorer call of one strategy run, so Cost adds up exactly."""

    def __init__(self) -> None:
        self.cost = Cost()
        self._t0 = time.perf_counter()

    def generate(self, generator: Generator, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = generator.generate(requests)
        for r in results:
            u = r.usage
            self.cost.policy_tokens += u.computed_tokens
            self.cost.policy_cached_tokens += u.cached_tokens
            self.cost.policy_completion_tokens += u.completion_tokens
            self.cost.policy_flops += u.flops
        return results

    def score(self, scorer: Scorer, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        batch = scorer.score(problem, solutions, completions)
        self.cost.verifier_tokens += batch.usage.computed_tokens
        self.cost.verifier_flops += batch.usage.flops
        self.cost.verifier_cpu_s += batch.usage.cpu_s
        return batch

    def finish(self) -> Cost:
        self.cost.wall_s = time.perf_counter() - self._t0
        return self.cost


StrategyFn = Callable[..., Solution]
STRATEGIES: dict[str, tuple[StrategyFn, type]] = {}


def register(name: str, params_cls: type) -> Callable[[StrategyFn], StrategyFn]:
    """Register `fn(problem, task, generator, scorer, params) -> Solution` under `name`."""

    def deco(fn: StrategyFn) -> StrategyFn:
        STRATEGIES[name] = (fn, params_cls)
        return fn

    return deco


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise `name=value is out of range; accepted: ...` unless `ok` (parameter validation)."""
    if not ok:
        raise out_of_range(name, value, accepted)


def require_scorer(scorer: Scorer | None, strategy: str) -> Scorer:
    """The scorer a strategy cannot run without, or a one-line error saying so."""
    if scorer is None:
        raise TTScaleError(f"strategy {strategy!r} needs a scorer; accepted: oracle, prm, orm, "
                           "likelihood, self-certainty, judge, checker")
    return scorer
