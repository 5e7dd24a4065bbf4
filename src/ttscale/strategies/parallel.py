"""Parallel strategies: greedy chain of thought, best-of-N, majority and weighted majority.

Each draws its samples in one request (`n` completions of the problem's prompt, so the engine
prefills the prompt once) and selects among them; none depends on the order of samples except
through deterministic tie-breaking (earliest sample wins).
"""
from __future__ import annotations

from dataclasses import dataclass

from ttscale.engine.base import Generator
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Candidate, Meter, Solution, register, require_scorer
from ttscale.strategies.sampling import (NParams, SampleParams, candidate, draw, finish,
                                         logprob_needs, sampling, score_candidates)
from ttscale.strategies.voting import vote
from ttscale.tasks.base import Task
from ttscale.types import Completion, Problem


@dataclass
class GreedyParams(SampleParams):
    """One chain of thought, greedy by default (temperature 0)."""

    temperature: float = 0.0


@dataclass
class BestOfNParams(NParams):
    """N samples; the highest-scored one wins."""


@dataclass
class MajorityParams(NParams):
    """N samples; the most frequent final answer wins (self-consistency)."""


@dataclass
class WeightedMajorityParams(NParams):
    """N samples; the answer with the largest sum of scores wins."""


def sample_n(meter: Meter, problem: Problem, task: Task, generator: Generator,
             scorer: Scorer | None, params: SampleParams, n: int,
             call: int = 0) -> tuple[list[Candidate], list[Completion]]:
    """`n` complete solutions of the problem, as candidates (scored when a scorer is given)."""
    lp, top = logprob_needs(scorer)
    comps = draw(meter, generator, [problem.prompt],
                 [sampling(params, n=n, call=call, logprobs=lp, top_logprobs=top)])[0]
    cands = [candidate(task, c.text, finish_reason=c.finish_reason) for c in comps]
    if scorer is not None:
        score_candidates(meter, scorer, problem, cands, comps)
    return cands, comps


@register("greedy", GreedyParams)
def greedy(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
           params: GreedyParams) -> Solution:
    """One chain of thought; the scorer is not used."""
    meter = Meter()
    cands, _ = sample_n(meter, problem, task, generator, None, params, 1)
    return finish(meter, "greedy", params, cands, 0)


def best_index(cands: list[Candidate]) -> int | None:
    """Index of the highest-scored candidate (earliest on ties); None when there are none."""
    if not cands:
        return None
    return max(range(len(cands)), key=lambda i: (cands[i].score or 0.0, -i))


@register("best_of_n", BestOfNParams)
def best_of_n(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
              params: BestOfNParams) -> Solution:
    """N samples scored by the scorer; the best one is the answer."""
    scorer = require_scorer(scorer, "best_of_n")
    meter = Meter()
    cands, _ = sample_n(meter, problem, task, generator, scorer, params, params.n)
    return finish(meter, "best_of_n", params, cands, best_index(cands))


@register("majority", MajorityParams)
def majority(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
             params: MajorityParams) -> Solution:
    """N samples; the most frequent final answer (grouped by the task's answer key)."""
    meter = Meter()
    cands, _ = sample_n(meter, problem, task, generator, None, params, params.n)
    return finish(meter, "majority", params, cands, vote(task, cands))


@register("weighted_majority", WeightedMajorityParams)
def weighted_majority(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
                      params: WeightedMajorityParams) -> Solution:
    """N samples; argmax over answers a of the sum of scores of the samples answering a."""
    scorer = require_scorer(scorer, "weighted_majority")
    meter = Meter()
    cands, _ = sample_n(meter, problem, task, generator, scorer, params, params.n)
    return finish(meter, "weighted_majority", params, cands,
                  vote(task, cands, [c.score or 0.0 for c in cands]))
