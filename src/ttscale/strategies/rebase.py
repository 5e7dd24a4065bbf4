"""REBASE (reward balanced search, Wu et al. 2024): expansion widths from a softmax of step scores.

At each depth every open node of the frontier is given a share of the remaining budget
B = n - (solutions finished so far): W_j = B · softmax(score_j / balance_temperature), rounded
so the widths sum to B exactly. High-scoring nodes get many children, weak ones few or none,
so the search spends its samples where the scorer sees promise without pruning to one beam.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ttscale.engine.base import Generator
from ttscale.errors import out_of_range
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Solution, register, require_scorer
from ttscale.strategies.stepwise import (StepSearch, StepSettings, check_select, check_step_settings,
                                         finish, positive)
from ttscale.strategies.tree import Node
from ttscale.tasks.base import Task
from ttscale.types import Problem


@dataclass
class RebaseParams(StepSettings):
    """REBASE: `n` finished solutions wanted; each depth samples what is left of that budget."""

    n: int = 8
    balance_temperature: float = 0.2  # softmax temperature over step scores; lower is greedier
    select: str = "weighted"  # the paper votes over answers weighted by their scores

    def __post_init__(self) -> None:
        check_step_settings(self)
        positive("n", self.n)
        if not self.balance_temperature > 0:
            raise out_of_range("balance_temperature", self.balance_temperature, "a number > 0")
        check_select(self.select)


def allocate(scores: Sequence[float], budget: int, temperature: float) -> list[int]:
    """Integer widths summing to `budget`, proportional to softmax(scores / temperature).

    Rounded by largest remainder (ties to the earlier node), so no sample is lost or added.
    """
    if not scores or budget <= 0:
        return [0] * len(scores)
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    exact = [budget * w / total for w in weights]
    widths = [math.floor(x) for x in exact]
    order = sorted(range(len(scores)), key=lambda i: (-(exact[i] - widths[i]), i))
    for i in order[: budget - sum(widths)]:
        widths[i] += 1
    return widths


@register("rebase", RebaseParams)
def rebase(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
           params: RebaseParams) -> Solution:
    """Reward-balanced tree search; widths per node from a softmax of the scorer's values."""
    scorer = require_scorer(scorer, "rebase")
    search = StepSearch(problem, task, generator, scorer, params, "rebase")
    frontier: list[Node] = [search.tree.root]
    widths = [params.n]
    finished: list[Node] = []
    while frontier:
        new = [c for kids in search.expand(frontier, widths) for c in kids]
        search.evaluate(new)
        finished += [c for c in new if c.terminal]
        open_ = [c for c in new if not c.terminal]
        budget = params.n - len(finished)
        if budget <= 0 or not open_:
            break
        alloc = allocate([c.score or 0.0 for c in open_], budget, params.balance_temperature)
        for c, w in zip(open_, alloc):
            c.meta["width"] = w
        frontier = [c for c, w in zip(open_, alloc) if w > 0]
        widths = [w for w in alloc if w > 0]
    chosen = search.pick(finished, params.select)
    return finish(search, chosen, finished, params)
