"""Hybrid: parallel chains, each refined sequentially from its first weak step, then selected.

`n` chains are sampled in one call and scored. In each of `rounds` refinement rounds every chain
whose step scores fall below `threshold` is re-sampled from that first weak step (the steps before
it are kept), all such chains in one call; a revision replaces its chain when the scorer values it
at least as highly. The final answer is a weighted vote (or the best value) over the chains.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from ttscale.engine.base import Generator
from ttscale.errors import out_of_range
from ttscale.rewards.base import Scored, Scorer
from ttscale.strategies.base import Candidate, Meter, Solution, register, require_scorer
from ttscale.strategies.stepwise import check_select, positive
from ttscale.tasks.base import Task
from ttscale.types import GenerationRequest, Problem, SamplingParams


@dataclass
class HybridParams:
    """Hybrid search: `n` parallel chains, `rounds` of step-level refinement each."""

    n: int = 4
    rounds: int = 2
    threshold: float = 0.5  # a step scored below this is weak
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 160  # per chain or per revision
    select: str = "weighted"
    seed: int | None = 0

    def __post_init__(self) -> None:
        positive("n", self.n)
        if not isinstance(self.rounds, int) or self.rounds < 0:
            raise out_of_range("rounds", self.rounds, "an integer >= 0")
        if not 0 <= self.temperature <= 5:
            raise out_of_range("temperature", self.temperature, "0 <= temperature <= 5")
        if not 0 < self.top_p <= 1:
            raise out_of_range("top_p", self.top_p, "0 < top_p <= 1")
        positive("max_tokens", self.max_tokens)
        check_select(self.select)


def weak_step(scored: Scored, threshold: float) -> int | None:
    """Index of the first step scored below `threshold`; 0 when only the total is low; None if fine."""
    for i, s in enumerate(scored.steps):
        if s < threshold:
            return i
    if not scored.steps and scored.value < threshold:
        return 0
    return None


def _sampling(p: HybridParams, n: int, seed_offset: int) -> SamplingParams:
    seed = None if p.seed is None else p.seed * 1_000_003 + seed_offset
    return SamplingParams(n=n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
                          seed=seed, logprobs=True)


@register("hybrid", HybridParams)
def hybrid(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
           params: HybridParams) -> Solution:
    """Parallel sampling, sequential step-level refinement of each chain, then selection."""
    scorer = require_scorer(scorer, "hybrid")
    meter = Meter()
    first = meter.generate(generator, [GenerationRequest(problem.prompt, _sampling(params, params.n, 0))])[0]
    chains = [c.text for c in first.completions]
    scores = meter.score(scorer, problem, chains).scores if chains else []
    revisions = [0] * len(chains)
    delim = task.step_delimiter
    for r in range(1, params.rounds + 1):
        todo: list[tuple[int, str]] = []
        for i, (text, sc) in enumerate(zip(chains, scores)):
            j = weak_step(sc, params.threshold)
            if j is not None:
                todo.append((i, "".join(s + delim for s in task.split_steps(text)[:j])))
        if not todo:
            break
        reqs = [GenerationRequest(problem.prompt + prefix, _sampling(params, 1, r * 10_007 + k))
                for k, (_, prefix) in enumerate(todo)]
        results = meter.generate(generator, reqs)
        revised = [(i, prefix + res.completions[0].text) for (i, prefix), res in zip(todo, results)
                   if not res.error and res.completions]
        if not revised:
            continue
        new_scores = meter.score(scorer, problem, [t for _, t in revised]).scores
        for (i, text), sc in zip(revised, new_scores):
            if sc.value >= scores[i].value:
                chains[i], scores[i] = text, sc
                revisions[i] += 1
    cands = [Candidate(text=t, answer=task.extract_answer(t), score=s.value, step_scores=list(s.steps),
                       meta={"revisions": k}) for t, s, k in zip(chains, scores, revisions)]
    best = _choose(cands, task, params.select)
    cost = meter.finish()
    return Solution(answer=best.answer if best else None, text=best.text if best else "", candidates=cands,
                    cost=cost, strategy="hybrid", params=asdict(params))


def _choose(cands: list[Candidate], task: Task, select: str) -> Candidate | None:
    if not cands:
        return None
    best = max(cands, key=lambda c: c.score or 0.0)
    if select == "best":
        return best
    totals: dict[str, float] = defaultdict(float)
    for c in cands:
        key = task.answer_key(c.answer)
        if key is not None:
            totals[key] += c.score or 0.0
    if not totals:
        return best
    top = max(totals, key=lambda a: (totals[a], a))
    return max((c for c in cands if task.answer_key(c.answer) == top), key=lambda c: c.score or 0.0)
