"""Spend a total budget across a batch of problems where it buys the most expected accuracy.

Each problem has options (strategy configurations) with an expected extra cost and expected
accuracy; only the upper concave frontier of (cost, accuracy) matters. Allocation starts every
problem at its free option and repeatedly takes the upgrade with the largest expected gain per
FLOP that still fits (the greedy solution of a concave knapsack); upgrades of equal gain per
FLOP (problems of one difficulty bin share a frontier) are taken in a seeded random order,
never by position, so which problems go without when the budget runs short does not depend
on how the batch happens to be sorted. Execution is sequential:
whatever a problem does not spend (an adaptive stopping rule that stopped early, samples that
were shorter than expected) goes back to a pool that later problems may upgrade with, at the
same marginal price; what a problem overspends is taken back from later problems' upgrades,
down to their cheapest option that answers, never to answering nothing (only the guard may
stop a call, when the budget itself runs out). A `BudgetGuard` checks the worst case of every
generation call before it is made, so the total spent never exceeds the budget.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ttscale.engine.base import Generator
from ttscale.rewards.base import ScoreBatch, Scorer
from ttscale.types import Completion, GenerationRequest, GenerationResult, Problem

ZERO_COST_SCORERS = ("oracle", "likelihood", "self-certainty")
NO_ANSWER = "none"  # the free option without a probe: answer nothing


@dataclass(frozen=True)
class Option:
    """One choice for a problem: a configuration, its expected extra cost and accuracy."""

    config: str
    cost: float
    accuracy: float
    latency: float = 0.0  # expected wall seconds of this configuration on one problem


def efficient_frontier(options: Sequence[Option]) -> list[Option]:
    """The upper concave hull of (cost, accuracy), cheapest first: every step buys accuracy
    at a falling price, which is what makes greedy allocation optimal. The cheapest option
    is always kept (it is the fallback)."""
    pts = sorted(options, key=lambda o: (o.cost, -o.accuracy))
    if not pts:
        return []
    mono: list[Option] = [pts[0]]
    for o in pts[1:]:
        if o.accuracy > mono[-1].accuracy + 1e-12 and o.cost > mono[-1].cost:
            mono.append(o)
    hull: list[Option] = []
    for o in mono:  # drop points below the chord of their neighbours
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b.accuracy - a.accuracy) * (o.cost - a.cost) <= (o.accuracy - a.accuracy) * (b.cost - a.cost):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def _ratio(h: Sequence[Option], j: int) -> float:
    d_cost = h[j + 1].cost - h[j].cost
    return (h[j + 1].accuracy - h[j].accuracy) / d_cost if d_cost > 0 else float("inf")


@dataclass
class Allocation:
    choice: list[int]  # index into each problem's frontier
    expected_cost: float
    expected_accuracy: float
    price: float  # gain per FLOP of the last upgrade taken (the marginal price)


def tie_ranks(n: int, seed: int = 0) -> np.ndarray:
    """A seeded random rank per position: how ties between problems are broken."""
    return np.random.default_rng([seed, n, 7331]).permutation(n)


def allocate(frontiers: Sequence[Sequence[Option]], budget: float, seed: int = 0,
             ranks: Sequence[int] | None = None) -> Allocation:
    """Greedy allocation by expected marginal gain per FLOP; never exceeds `budget` in
    expectation (the cheapest options must fit: the caller guarantees they cost nothing).
    Equal gains per FLOP are taken in the order of `ranks` (default: `tie_ranks(n, seed)`)."""
    choice = [0] * len(frontiers)
    rank = tie_ranks(len(frontiers), seed) if ranks is None else ranks
    spent = sum(h[0].cost for h in frontiers)
    heap = [(-_ratio(h, 0), int(rank[i]), i) for i, h in enumerate(frontiers) if len(h) > 1]
    heapq.heapify(heap)
    price = float("inf")
    while heap:
        neg_ratio, _, i = heapq.heappop(heap)
        h, j = frontiers[i], choice[i]
        step = h[j + 1].cost - h[j].cost
        if spent + step > budget:
            continue  # this upgrade does not fit; smaller ones of other problems may
        spent += step
        choice[i] = j + 1
        price = -neg_ratio
        if j + 2 < len(h):
            heapq.heappush(heap, (-_ratio(h, j + 1), int(rank[i]), i))
    acc = sum(h[c].accuracy for h, c in zip(frontiers, choice))
    return Allocation(choice, spent, acc, 0.0 if price == float("inf") else price)


class Ledger:
    """Sequential execution of an allocation: a pool of unspent budget flows to later problems.

    The pool is the budget minus what was spent minus the allotments of problems not yet run.
    `upgrade(i)` first covers a negative pool (an earlier problem overran) by taking back,
    among the problems not yet run (i included), the upgrades that bought the least accuracy
    per FLOP (ties by rank), the reverse of the allocation: an overrun is paid where it costs
    least, not by whichever problem happens to run next (taking a long-mode chain back to a
    short one can cost 40 points where a best-of-4 taken back to one sample costs 6). No
    problem goes below its cheapest option that answers when the allocation gave it one: an
    overrun of a few FLOPs must not cost a problem its whole answer (the guard still stops any
    call the budget cannot cover). Then it spends a positive pool on problem i's further
    frontier steps whose gain per FLOP is at least the allocation's marginal price;
    `limit(i)` is the most problem i may spend: its
    allotment twice over plus the free pool, never more than what is left of the budget;
    `charge(i, spent)` settles it.
    """

    def __init__(self, frontiers: Sequence[Sequence[Option]], budget: float,
                 ranks: Sequence[int] | None = None) -> None:
        self.frontiers = frontiers
        self.budget = budget
        self.rank = tie_ranks(len(frontiers)) if ranks is None else ranks
        self.allocation = allocate(frontiers, budget, ranks=self.rank)
        self.choice = list(self.allocation.choice)
        # the least each problem may be taken back to: its cheapest option that answers
        self.floor = [1 if c > 0 and h[0].config == NO_ANSWER else 0
                      for h, c in zip(frontiers, self.choice)]
        self.pending = set(range(len(frontiers)))  # problems not yet charged
        self.pool = budget - self.allocation.expected_cost
        self.spent = 0.0

    def _cover_overrun(self) -> None:
        while self.pool < -1e-9:
            back = [(_ratio(self.frontiers[r], self.choice[r] - 1), int(self.rank[r]), r)
                    for r in self.pending if self.choice[r] > self.floor[r]]
            if not back:
                return
            _, _, r = min(back)
            h, j = self.frontiers[r], self.choice[r]
            self.pool += h[j].cost - h[j - 1].cost
            self.choice[r] = j - 1

    def upgrade(self, i: int) -> int:
        h = self.frontiers[i]
        self._cover_overrun()
        price = self.allocation.price
        while self.choice[i] + 1 < len(h):
            j = self.choice[i]
            step = h[j + 1].cost - h[j].cost
            if step > self.pool + 1e-9 or _ratio(h, j) < price:
                break
            self.pool -= step
            self.choice[i] = j + 1
        return self.choice[i]

    def allotment(self, i: int) -> float:
        return self.frontiers[i][self.choice[i]].cost

    def limit(self, i: int) -> float:
        return max(0.0, min(self.budget - self.spent, 2 * self.allotment(i) + max(self.pool, 0.0)))

    def charge(self, i: int, spent: float) -> None:
        self.pool += self.allotment(i) - spent
        self.spent += spent
        self.pending.discard(i)


class BudgetExhausted(RuntimeError):
    """A call would have spent more than the budget left; it was not made."""


class BudgetGuard:
    """A Generator (and Scorer) wrapper that refuses any call whose worst case does not fit.

    Worst case of a generation request: prefill of the whole prompt (no cache) plus n samples
    of max_tokens each, by the model's FLOP formula. Scorers: the oracle and self-certainty
    cost nothing; a learned verifier with a `shape` is checked by the same formula over the
    solutions' tokens; any other scorer is charged after the fact.

    `limit` is hard: no call whose worst case could take the spend past it. `share`, when set,
    is the current problem's part of the budget and is soft: no new call once the spend has
    reached it, but a call whose worst case exceeds it may start while the hard limit covers
    that worst case. A long-mode chain's worst case (768 tokens) is several times what it
    usually costs; checking it against a problem's share refused calls the share would have
    paid for, and the problem went unanswered. An overrun of the share is settled by the
    `Ledger` from later problems' upgrades.
    """

    def __init__(self, generator: Generator, limit: float, share: float | None = None) -> None:
        self.inner = generator
        self.limit = limit
        self.share = share
        self.spent = 0.0
        self.model_name = generator.model_name
        self.shape = generator.shape
        self.context_length = generator.context_length

    def __getattr__(self, name: str):  # vocab_size, tokenizer, ... of the wrapped generator
        return getattr(self.inner, name)

    def worst_case(self, requests: Sequence[GenerationRequest]) -> float:
        total = 0.0
        for r in requests:
            p = len(r.prompt) if isinstance(r.prompt, list) else len(self.inner.tokenize(r.prompt))
            total += self.shape.span_flops(0, p) + r.params.n * self.shape.span_flops(p, r.params.max_tokens)
        return total

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self.share is not None and self.spent >= self.share:
            raise BudgetExhausted(f"this problem's share of the budget ({self.share:.3g} FLOPs "
                                  "spent in all) is used up")
        if self.spent + self.worst_case(requests) > self.limit:
            raise BudgetExhausted(f"a call of worst case {self.worst_case(requests):.3g} FLOPs "
                                  f"does not fit in {self.limit - self.spent:.3g} left")
        results = self.inner.generate(requests)
        self.spent += sum(r.usage.flops for r in results)
        return results

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.inner.detokenize(ids)

    def guard_scorer(self, scorer: Scorer | None) -> Scorer | None:
        return None if scorer is None else _GuardedScorer(scorer, self)


class _GuardedScorer:
    def __init__(self, scorer: Scorer, guard: BudgetGuard) -> None:
        self.inner, self.guard = scorer, guard
        self.name = scorer.name

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        shape = getattr(self.inner, "shape", None)
        if shape is not None:
            worst = sum(shape.span_flops(0, len(self.guard.tokenize(problem.prompt + s)) + 2)
                        for s in solutions)
            if self.guard.spent + worst > self.guard.limit:
                raise BudgetExhausted(f"scoring of worst case {worst:.3g} FLOPs does not fit")
        batch = self.inner.score(problem, solutions, completions)
        self.guard.spent += batch.usage.flops
        return batch
