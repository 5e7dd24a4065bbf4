"""Shared helpers of the sampling strategies: parameters, metered sampling, candidates, scoring.

Every strategy draws through `draw` (which goes through `Meter.generate`) and scores through
`score_candidates` (through `Meter.score`), so a Solution's Cost is exactly the sum of what its
generator and scorer calls reported.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Candidate, Meter, Solution, require
from ttscale.tasks.base import Task
from ttscale.types import Completion, GenerationRequest, Problem, SamplingParams


@dataclass
class SampleParams:
    """How each sample is drawn (OpenAI names); every strategy's parameters extend these."""

    temperature: float = 0.8  # sampling temperature; 0 is greedy
    top_p: float = 1.0  # nucleus sampling; 1 switches it off
    top_k: int = 0  # top-k sampling; 0 switches it off
    max_tokens: int = 256  # generated tokens per sample (per call for step-wise strategies)
    seed: int | None = 0  # base seed; each call derives its own from it (None: unseeded)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a TTScaleError naming the first parameter that makes no sense."""
        require(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "0 < top_p <= 1")
        require(self.top_k >= 0, "top_k", self.top_k, ">= 0")
        require(self.max_tokens >= 1, "max_tokens", self.max_tokens, ">= 1")


@dataclass
class NParams(SampleParams):
    """Parameters of a strategy that draws up to `n` samples of one prompt."""

    n: int = 8  # samples per problem (the most a stopping rule may draw)

    def validate(self) -> None:
        super().validate()
        require(self.n >= 1, "n", self.n, ">= 1")


def derive_seed(seed: int | None, k: int) -> int | None:
    """The seed of the k-th call of a strategy run: distinct per call, reproducible per run."""
    return None if seed is None else (seed * 1_000_003 + k) % (2**31 - 1)


def sampling(p: SampleParams, n: int = 1, call: int = 0, stop: Sequence[str] = (),
             logprobs: bool = False, top_logprobs: int = 0, temperature: float | None = None,
             max_tokens: int | None = None) -> SamplingParams:
    """The SamplingParams of one call, from the strategy's parameters."""
    return SamplingParams(n=n, temperature=p.temperature if temperature is None else temperature,
                          top_p=p.top_p, top_k=p.top_k,
                          max_tokens=p.max_tokens if max_tokens is None else max_tokens,
                          stop=list(stop), seed=derive_seed(p.seed, call), logprobs=logprobs,
                          top_logprobs=top_logprobs if logprobs else 0)


def logprob_needs(scorer: Scorer | None) -> tuple[bool, int]:
    """Whether samples must carry logprobs for `scorer`, and how many alternatives per token."""
    if scorer is not None and getattr(scorer, "needs_logprobs", False):
        return True, int(getattr(scorer, "top_logprobs", 0))
    return False, 0


def draw(meter: Meter, generator: Generator, prompts: Sequence[str],
         params: Sequence[SamplingParams]) -> list[list[Completion]]:
    """One batch of requests through the meter; the completions of each request, in order."""
    results = meter.generate(generator, [GenerationRequest(pr, pa)
                                         for pr, pa in zip(prompts, params)])
    out = []
    for r in results:
        if r.error is not None:
            raise TTScaleError(f"generation failed: {r.error}")
        out.append(r.completions)
    return out


def candidate(task: Task, text: str, **meta: object) -> Candidate:
    """A candidate with its extracted final answer (None when it states none)."""
    return Candidate(text=text, answer=task.extract_answer(text), meta=dict(meta))


def score_candidates(meter: Meter, scorer: Scorer, problem: Problem,
                     candidates: Sequence[Candidate],
                     completions: Sequence[Completion] | None = None) -> None:
    """Score candidates in place (`score`, `step_scores`), counting the verifier's cost."""
    if not candidates:
        return
    batch = meter.score(scorer, problem, [c.text for c in candidates], completions)
    for c, s in zip(candidates, batch.scores):
        c.score = s.value
        c.step_scores = list(s.steps) if s.steps else None


def finish(meter: Meter, strategy: str, params: object, candidates: list[Candidate],
           chosen: int | None, **extra: object) -> Solution:
    """The Solution of a run: the chosen candidate (None: no answer) and the exact cost."""
    if chosen is None:  # no candidate answered: show the first attempt, answer nothing
        text, answer = (candidates[0].text if candidates else ""), None
    else:
        text, answer = candidates[chosen].text, candidates[chosen].answer
    return Solution(answer=answer, text=text, candidates=candidates, cost=meter.finish(),
                    strategy=strategy, params={**asdict(params), **extra})
