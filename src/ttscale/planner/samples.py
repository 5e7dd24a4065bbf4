"""Sample once, select many: N samples of a problem drawn in one request, each with its cost.

A `SampleSet` keeps what every selection rule needs (extracted answers, their grades, scores)
and what each sample cost, so that majority, best-of-N, weighted majority, pass@k, ESC,
Adaptive-Consistency and confident consistency can be evaluated at every n <= N, in any sample
order, without new generation. The cost of a subset counts the prompt's prefill once (the
engine computes it once for all n samples) plus each chosen sample's own tokens and its
verifier cost.

Per-sample policy FLOPs come from the model's shape (`ModelShape.span_flops` of the sample's
tokens after the prompt); the prefill is whatever the engine reported beyond them, so the
cost of all N samples equals the engine's usage exactly. Verifier FLOPs and wall time are
shared out in proportion to each sample's tokens (documented approximation: the engine
decodes the samples together, so their individual wall times do not exist).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ttscale.engine.base import Generator
from ttscale.engine.task_stops import with_task_stops
from ttscale.errors import TTScaleError, unknown
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Candidate
from ttscale.strategies.parallel import best_index
from ttscale.strategies.stopping import (AC_THRESHOLD, CONFIDENCE, ESC_WINDOW, adaptive_should_stop,
                                        confident_should_stop, esc_should_stop)
from ttscale.strategies.voting import top_two_keys, vote
from ttscale.tasks.base import Task
from ttscale.types import Cost, GenerationRequest, Problem, SamplingParams

SELECTION_RULES = ("majority", "best_of_n", "weighted_majority", "pass_at_k", "esc",
                   "adaptive_consistency", "confident_consistency")
STOPPING_RULES = ("esc", "adaptive_consistency", "confident_consistency")  # may draw fewer than n
# the rules checked after every sample (ESC after each window), and the vote each stopping rule
# answers with over the samples it drew
ONE_AT_A_TIME = ("adaptive_consistency", "confident_consistency")
STOPPING_VOTE = {"esc": "majority", "adaptive_consistency": "majority",
                 "confident_consistency": "weighted_majority"}
SETTING_KEYS = ("temperature", "min_p", "effort")  # how samples are drawn: part of a configuration
NEEDS_SCORES = ("best_of_n", "weighted_majority", "confident_consistency")
ORACLE_RULES = ("pass_at_k",)  # need the answer key: measured, never deployable


@dataclass
class SampleSet:
    """N samples of one problem and what each cost; `order` is how they were drawn."""

    answers: list[str | None]
    keys: list[str | None]  # task.answer_key of each answer (equal answers vote together)
    correct: list[bool]
    scores: list[float | None]
    texts: list[str]
    completion_tokens: list[int]
    sample_flops: list[float]
    verifier_flops: list[float] = field(default_factory=list)
    verifier_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_flops: float = 0.0
    wall_s: float = 0.0  # measured: the one request that drew all n samples (at batch n)
    score_wall_s: float = 0.0  # measured: scoring them
    completions: list[Any] = field(default_factory=list, repr=False)  # as drawn (logprobs for scoring later)

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def has_scores(self) -> bool:
        return self.n > 0 and all(s is not None for s in self.scores)

    def cost(self, idx: Sequence[int], scored: bool = False) -> Cost:
        """The cost of drawing the samples `idx`, prefill counted once, plus their verifier
        cost when `scored` (only rules that read scores pay for them: `NEEDS_SCORES`)."""
        idx = list(idx)
        prefill_tokens = self.prompt_tokens - self.cached_tokens
        comp = sum(self.completion_tokens[i] for i in idx)
        total_tokens = prefill_tokens + sum(self.completion_tokens) or 1
        vf = sum(self.verifier_flops[i] for i in idx) if scored and self.verifier_flops else 0.0
        vt = sum(self.verifier_tokens[i] for i in idx) if scored and self.verifier_tokens else 0
        return Cost(policy_tokens=prefill_tokens + comp if idx else 0,
                    policy_cached_tokens=self.cached_tokens if idx else 0,
                    policy_completion_tokens=comp,
                    policy_flops=(self.prefill_flops + sum(self.sample_flops[i] for i in idx))
                    if idx else 0.0,
                    verifier_tokens=vt, verifier_flops=vf,
                    wall_s=(self.wall_s * (prefill_tokens + comp) / total_tokens
                            + (self.score_wall_s * comp / max(sum(self.completion_tokens), 1)
                               if scored else 0.0)) if idx else 0.0)

    def latency(self, rounds: Sequence[Sequence[int]], scored: bool = False) -> float:
        """Estimated wall seconds to draw the samples in `rounds`, one request per round, each
        waiting for the one before (a stopping rule's windows). A request's samples decode
        together, so a round lasts as long as its longest sample: the measured wall time of
        the whole draw scaled by (longest sample of the round + 1) / (longest of all + 1);
        scoring adds its measured time in proportion to the round's tokens, when `scored`.
        Documented approximation: the decode step is timed at the batch the store ran (n)."""
        if not rounds or self.n == 0:
            return 0.0
        longest = max(self.completion_tokens) + 1
        total = sum(k + 1 for k in self.completion_tokens)
        out = 0.0
        for r in rounds:
            if not r:
                continue
            out += self.wall_s * (max(self.completion_tokens[i] for i in r) + 1) / longest
            if scored:
                out += self.score_wall_s * sum(self.completion_tokens[i] + 1 for i in r) / total
        return out

    def candidates(self, idx: Sequence[int]) -> list[Candidate]:
        return [Candidate(text=self.texts[i] if self.texts else "", answer=self.answers[i],
                          score=self.scores[i]) for i in idx]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SampleSet":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Selection:
    """What a rule chose from a subset of samples: its answer, grade, and samples used."""

    answer: str | None
    correct: bool
    used: int  # samples the rule drew (a stopping rule may use fewer than n)


def select(rule: str, task: Task, samples: SampleSet, n: int, order: Sequence[int] | None = None,
           *, window: int = ESC_WINDOW, threshold: float = AC_THRESHOLD,
           confidence: float = CONFIDENCE) -> Selection:
    """Apply `rule` to the first `n` samples in `order` (default: as drawn).

    Answers are grouped by the task's answer key and ties go to the earliest sample, exactly
    as the online strategies do, so an offline selection equals the online strategy's choice
    on the same samples.
    """
    order = list(range(samples.n)) if order is None else list(order)
    if not 1 <= n <= len(order):
        raise TTScaleError(f"n={n} is out of range; accepted: 1 <= n <= {len(order)} stored samples")
    if rule not in SELECTION_RULES:
        raise unknown("selection rule", rule, SELECTION_RULES)
    if rule in NEEDS_SCORES and not samples.has_scores:
        raise TTScaleError(f"rule {rule!r} needs scores and the store has none")
    idx = order[:n]
    if rule == "pass_at_k":
        hit = next((i for i in idx if samples.correct[i]), None)
        pick = idx[0] if hit is None else hit
        return Selection(samples.answers[pick], hit is not None, n)
    if rule == "esc":
        used = n
        for start in range(0, n, window):
            w = idx[start: min(start + window, n)]
            if esc_should_stop([samples.keys[i] for i in w]):
                used = start + len(w)
                break
        idx = idx[:used]
    elif rule in ONE_AT_A_TIME:
        keys = [samples.keys[i] for i in idx]
        scores = [samples.scores[i] for i in idx]
        used = n
        for m in range(1, n + 1):
            if sequential_stop(rule, keys[:m], scores[:m], threshold=threshold,
                               confidence=confidence):
                used = m
                break
        idx = idx[:used]
    cands = samples.candidates(idx)
    if rule == "best_of_n":
        chosen = best_index(cands)
    elif STOPPING_VOTE.get(rule, rule) == "weighted_majority":
        chosen = vote(task, cands, [c.score or 0.0 for c in cands])
    else:
        chosen = vote(task, cands)
    if chosen is None:
        return Selection(None, False, len(idx))
    i = idx[chosen]
    return Selection(samples.answers[i], bool(samples.correct[i]), len(idx))


def sequential_stop(rule: str, keys: Sequence[str | None], scores: Sequence[float | None], *,
                    threshold: float = AC_THRESHOLD, confidence: float = CONFIDENCE) -> bool:
    """Whether a one-sample-at-a-time stopping rule (Adaptive-Consistency or confident
    consistency) stops after samples with these answer keys and scores."""
    if rule == "confident_consistency":
        return confident_should_stop(keys, scores, confidence, threshold)
    return adaptive_should_stop(*top_two_keys(keys), threshold=threshold)


def draw_samples(generator: Generator, problem: Problem, task: Task, n: int,
                 params: SamplingParams, scorer: Scorer | None = None) -> SampleSet:
    """Draw `n` samples of `problem` in one request (one prefill), grade and score them."""
    lp = bool(scorer is not None and getattr(scorer, "needs_logprobs", False))
    sp = SamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                        top_k=params.top_k, max_tokens=params.max_tokens, stop=list(params.stop),
                        seed=params.seed, logprobs=lp or params.logprobs,
                        top_logprobs=int(getattr(scorer, "top_logprobs", 0)) if lp else 0,
                        min_p=params.min_p)
    t0 = time.perf_counter()
    res = with_task_stops(generator, task).generate([GenerationRequest(problem.prompt, sp)])[0]
    gen_s = time.perf_counter() - t0
    if res.error is not None:
        raise TTScaleError(f"generation failed for {problem.id}: {res.error}")
    comps = res.completions
    texts = [c.text for c in comps]
    answers = [task.extract_answer(t) for t in texts]
    u = res.usage
    shape = generator.shape
    lengths = _completion_lengths(comps, u.completion_tokens)
    sample_flops = [shape.span_flops(u.prompt_tokens, k) for k in lengths]
    scores: list[float | None] = [None] * len(comps)
    vflops = [0.0] * len(comps)
    vtok = [0] * len(comps)
    t1 = time.perf_counter()
    if scorer is not None:
        batch = scorer.score(problem, texts, comps)
        scores = [float(s.value) for s in batch.scores]
        weights = [k + 1 for k in lengths]
        total = sum(weights)
        vflops = [batch.usage.flops * w / total for w in weights]
        computed = batch.usage.computed_tokens
        vtok = [computed * w // total for w in weights]
        vtok[-1] += computed - sum(vtok)
    return SampleSet(
        answers=answers, keys=[task.answer_key(a) for a in answers],
        correct=[bool(task.check(problem, a)) if a is not None else False for a in answers],
        scores=scores, texts=texts, completion_tokens=lengths,
        sample_flops=sample_flops, verifier_flops=vflops, verifier_tokens=vtok,
        prompt_tokens=u.prompt_tokens, cached_tokens=u.cached_tokens,
        prefill_flops=max(u.flops - sum(sample_flops), 0.0),
        wall_s=gen_s, score_wall_s=time.perf_counter() - t1 if scorer is not None else 0.0,
        completions=list(comps))


def _completion_lengths(comps: Sequence[Any], total: int) -> list[int]:
    """Tokens of each completion: its token ids where the backend returns them, else the
    usage's completion tokens shared out by text length (servers report only the total)."""
    if all(c.token_ids for c in comps) or total == 0:
        return [len(c.token_ids) for c in comps]
    chars = [len(c.text) + 1 for c in comps]
    out = [total * ch // sum(chars) for ch in chars]
    out[-1] += total - sum(out)
    return out


def sample_order(n: int, replicate: int) -> list[int]:
    """The order in which replicate `replicate` reads N stored samples: as drawn for 0, else a
    fixed permutation, so several independent subsamples come from one set of samples."""
    import random

    order = list(range(n))
    if replicate:
        random.Random(f"ttscale-replicate-{replicate}").shuffle(order)
    return order


def split_setting(params: dict[str, Any], keys: Sequence[str] = SETTING_KEYS
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A configuration's parameters as (sampler setting, the rule's or strategy's own). A
    setting holds only what differs from the sweep's base setting (temperature, min_p,
    effort); an empty one is the base."""
    setting = {k: params[k] for k in keys if k in params}
    return setting, {k: v for k, v in params.items() if k not in setting}


def setting_id(setting: dict[str, Any]) -> str:
    """A stable name of a sampler setting: `effort=high,temperature=1.0` ("" for the base)."""
    return ",".join(f"{k}={setting[k]}" for k in sorted(setting))


def rounds_of(rule: str, order: Sequence[int], used: int, window: int = ESC_WINDOW,
              start: int = 0) -> list[list[int]]:
    """The dependent requests in which a rule draws its `used` samples, from sample `start` on
    (samples before it were drawn already, by the probe): one for the parallel rules, one
    per window for ESC, one per sample for (confident) Adaptive-Consistency. Their number is
    the rule's sequential depth."""
    idx = list(order[start:used])
    if not idx:
        return []
    if rule == "esc":
        return [idx[i: i + window] for i in range(0, len(idx), window)]
    if rule in ONE_AT_A_TIME:
        return [[i] for i in idx]
    return [idx]
