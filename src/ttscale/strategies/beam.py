"""Beam search with a step scorer, and diverse verifier tree search (DVTS).

Beam search (as in HF search-and-learn): N samples per iteration; the top N/M open beams by
step score are kept and each is extended by M sampled next steps; finished solutions are set
aside until N have finished. Optional lookahead scores a beam after k greedy steps ahead
(the lookahead steps are not kept). DVTS splits the N samples into N/M independent subtrees and
extends each greedily by its best-scored child, which keeps the subtrees diverse.
"""
from __future__ import annotations

from dataclasses import dataclass

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError, out_of_range
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Solution, register, require_scorer
from ttscale.strategies.stepwise import (StepSearch, StepSettings, check_select, check_step_settings,
                                         finish, positive)
from ttscale.strategies.tree import Node
from ttscale.tasks.base import Task
from ttscale.types import Problem


def _check_width(n: int, width: int) -> None:
    positive("n", n)
    positive("width", width)
    if width > n:
        raise out_of_range("width", width, f"1 <= width <= n (n={n})")
    if n % width:
        raise TTScaleError(f"n={n} is not a multiple of width={width}; accepted: n = k * width")


@dataclass
class BeamParams(StepSettings):
    """Beam search: `n` samples per step, `width` children per kept beam (n/width beams kept)."""

    n: int = 8
    width: int = 4
    lookahead: int = 0  # greedy steps rolled out before scoring a beam (0: none)
    select: str = "best"  # among finished beams: "best" value or "weighted" vote over answers

    def __post_init__(self) -> None:
        check_step_settings(self)
        _check_width(self.n, self.width)
        if not isinstance(self.lookahead, int) or self.lookahead < 0:
            raise out_of_range("lookahead", self.lookahead, "an integer >= 0")
        check_select(self.select)


@dataclass
class DVTSParams(StepSettings):
    """DVTS: `n` samples per step split into n/width subtrees, each expanded by `width`."""

    n: int = 8
    width: int = 4
    select: str = "best"

    def __post_init__(self) -> None:
        check_step_settings(self)
        _check_width(self.n, self.width)
        check_select(self.select)


def _spread(total: int, k: int) -> list[int]:
    """`total` split into `k` near-equal counts, larger ones first."""
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def _score_new(search: StepSearch, nodes: list[Node], lookahead: int) -> None:
    texts = search.lookahead(nodes, lookahead) if lookahead else None
    search.evaluate(nodes, texts)


@register("beam_search", BeamParams)
def beam_search(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
                params: BeamParams) -> Solution:
    """Step-level beam search guided by `scorer` (a PRM, or the oracle's step check)."""
    scorer = require_scorer(scorer, "beam_search")
    search = StepSearch(problem, task, generator, scorer, params, "beam_search")
    keep = params.n // params.width
    active: list[Node] = [search.tree.root]
    counts = [params.n]
    finished: list[Node] = []
    while active:
        new = [c for kids in search.expand(active, counts) for c in kids]
        _score_new(search, new, params.lookahead)
        finished += [c for c in new if c.terminal]
        open_ = sorted((c for c in new if not c.terminal), key=lambda c: (-(c.score or 0.0), c.id))
        if len(finished) >= params.n:
            break
        active = open_[:keep]
        counts = _spread(params.n, len(active)) if active else []
    chosen = search.pick(finished, params.select)
    return finish(search, chosen, finished, params)


@register("dvts", DVTSParams)
def dvts(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
         params: DVTSParams) -> Solution:
    """Diverse verifier tree search: independent subtrees, each greedy by step score."""
    scorer = require_scorer(scorer, "dvts")
    search = StepSearch(problem, task, generator, scorer, params, "dvts")
    current: list[tuple[int, Node]] = [(i, search.tree.root) for i in range(params.n // params.width)]
    done: list[Node] = []
    while current:
        kids = search.expand([node for _, node in current], [params.width] * len(current))
        search.evaluate([c for ks in kids for c in ks])
        nxt = []
        for (subtree, node), ks in zip(current, kids):
            if not ks:  # the backend failed this request: the subtree ends where it is
                if node is not search.tree.root:
                    done.append(node)
                continue
            best = max(ks, key=lambda c: (c.score or 0.0, -c.id))
            best.meta["subtree"] = subtree
            if best.terminal:
                done.append(best)
            else:
                nxt.append((subtree, best))
        current = nxt
    chosen = search.pick(done, params.select)
    return finish(search, chosen, done, params)
