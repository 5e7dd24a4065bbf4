"""Adaptive stopping for parallel sampling: ESC, Adaptive-Consistency, its confident variant
and DeepConf.

* ESC (Li et al. 2024): sample in windows of `window` answers; stop when a window is unanimous.
* Adaptive-Consistency (Aggarwal et al. 2023): after each batch, with v1 and v2 the vote counts
  of the two most frequent answers, stop when
  P(p1 > p2 | votes) = ∫_{1/2}^{1} x^v1 (1-x)^v2 dx / ∫_0^1 x^v1 (1-x)^v2 dx >= threshold,
  i.e. 1 - I_{1/2}(v1 + 1, v2 + 1) with I the regularised incomplete beta function.
* Confident consistency (this project): Adaptive-Consistency that also stops as soon as the
  answer of the score-weighted vote has a sample the scorer rates at least `confidence`, and
  answers with that weighted vote. With the policy's own likelihood as the score (no FLOPs), an
  easy problem stops at its first confident sample while a hard one keeps sampling. The score's
  scale depends on the task and the thinking mode, so `confidence` is chosen on held-out
  problems (the sweep measures a grid of values; its headline picks one per task by
  cross-validation, docs/results.md).
* DeepConf (Fu et al. 2025, online variant): token confidence C_i = -mean of the top-k logprobs
  at position i; a trace's group confidence is the mean of C over a sliding window of `window`
  tokens. Warm-up traces set a threshold at the `percentile`-th percentile of their lowest group
  confidence; later traces are generated in chunks and terminated as soon as a full window falls
  below it; surviving traces vote, each weighted by its lowest group confidence.

All answer with a (weighted) majority over the samples they kept; the pure stopping tests
(`esc_should_stop`, `adaptive_should_stop`, `confident_should_stop`) are shared with offline
selection.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Candidate, Meter, Solution, register, require, require_scorer
from ttscale.strategies.parallel import sample_n
from ttscale.strategies.sampling import NParams, candidate, draw, finish, sampling
from ttscale.strategies.voting import top_two, top_two_keys, vote, vote_keys
from ttscale.tasks.base import Task
from ttscale.types import Completion, Problem


# -- stopping rules ------------------------------------------------------------------------
def esc_should_stop(window_keys: Sequence[str | None]) -> bool:
    """ESC: a (non-empty) window whose answers all exist and are equal."""
    return len(window_keys) > 0 and window_keys[0] is not None and all(
        k == window_keys[0] for k in window_keys)


# The stopping rules' defaults, shared by the strategies, the sample store, the sweep, the online
# planner and `ttscale select`.
ESC_WINDOW = 4  # ESC: samples per window; a unanimous window stops sampling
AC_THRESHOLD = 0.95  # Adaptive-Consistency: stop when P(leading answer is the majority) >= this
CONFIDENCE = 0.9  # confident consistency: stop at an answer with a sample scored >= this


def beta_stop_probability(v1: int, v2: int) -> float:
    """P(p1 > p2 | v1, v2 votes) under a uniform prior: 1 - I_{1/2}(v1 + 1, v2 + 1)."""
    return float(1.0 - betainc(v1 + 1, v2 + 1, 0.5))


def adaptive_should_stop(v1: int, v2: int, threshold: float = AC_THRESHOLD) -> bool:
    return v1 > 0 and beta_stop_probability(v1, v2) >= threshold


def confident_should_stop(keys: Sequence[str | None], scores: Sequence[float | None],
                          confidence: float, threshold: float = AC_THRESHOLD) -> bool:
    """Confident consistency, on the samples' answer keys and scores so far: the weighted
    vote's answer has a sample scored >= `confidence`, or Adaptive-Consistency's Beta rule fires
    on the plain counts. A sample without a score weighs 0."""
    weights = [s or 0.0 for s in scores]
    lead = vote_keys(keys, weights)
    if lead is not None and any(k == keys[lead] and w >= confidence for k, w in zip(keys, weights)):
        return True
    return adaptive_should_stop(*top_two_keys(keys), threshold=threshold)


# -- ESC -----------------------------------------------------------------------------------
@dataclass
class EscParams(NParams):
    """Windows of `window` samples, at most `n` in all."""

    n: int = 16
    window: int = ESC_WINDOW

    def validate(self) -> None:
        super().validate()
        require(1 <= self.window <= self.n, "window", self.window, f"1 <= window <= n={self.n}")


@register("esc", EscParams)
def esc(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
        params: EscParams) -> Solution:
    """Early-stopping self-consistency: majority vote over the windows drawn until one agrees."""
    meter = Meter()
    cands: list[Candidate] = []
    call = 0
    while len(cands) < params.n:
        size = min(params.window, params.n - len(cands))
        window, _ = sample_n(meter, problem, task, generator, None, params, size, call=call)
        for c in window:
            c.meta["window"] = call
        cands += window
        call += 1
        if esc_should_stop([task.answer_key(c.answer) for c in window]):
            break
    return finish(meter, "esc", params, cands, vote(task, cands), samples=len(cands))


# -- Adaptive-Consistency ------------------------------------------------------------------
@dataclass
class AdaptiveConsistencyParams(NParams):
    """Draw `batch` samples at a time, at most `n`, until the Beta stopping rule fires."""

    n: int = 16
    threshold: float = AC_THRESHOLD
    batch: int = 1  # samples per call; the rule is checked after each call

    def validate(self) -> None:
        super().validate()
        require(0.5 < self.threshold < 1, "threshold", self.threshold, "0.5 < threshold < 1")
        require(1 <= self.batch <= self.n, "batch", self.batch, f"1 <= batch <= n={self.n}")


def _sample_until(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
                  params: AdaptiveConsistencyParams,
                  stop: Callable[[list[Candidate]], bool]) -> tuple[Meter, list[Candidate]]:
    """Draw `params.batch` samples at a time (scored when a scorer is given), at most
    `params.n`, until `stop` holds for the samples drawn so far."""
    meter = Meter()
    cands: list[Candidate] = []
    call = 0
    while len(cands) < params.n:
        size = min(params.batch, params.n - len(cands))
        new, _ = sample_n(meter, problem, task, generator, scorer, params, size, call=call)
        cands += new
        call += 1
        if stop(cands):
            break
    return meter, cands


@register("adaptive_consistency", AdaptiveConsistencyParams)
def adaptive_consistency(problem: Problem, task: Task, generator: Generator,
                         scorer: Scorer | None, params: AdaptiveConsistencyParams) -> Solution:
    """Self-consistency that stops once the leading answer is very likely the majority."""
    meter, cands = _sample_until(problem, task, generator, None, params, lambda cands:
                                 adaptive_should_stop(*top_two(task, cands), params.threshold))
    v1, v2 = top_two(task, cands)
    return finish(meter, "adaptive_consistency", params, cands, vote(task, cands),
                  samples=len(cands), stop_probability=beta_stop_probability(v1, v2))


# -- confident consistency -----------------------------------------------------------------
@dataclass
class ConfidentConsistencyParams(AdaptiveConsistencyParams):
    """Adaptive-Consistency that also stops at an answer with a sample scored >= `confidence`."""

    confidence: float = CONFIDENCE  # on the scorer's scale (likelihood: exp(mean token logprob))

    def validate(self) -> None:
        super().validate()
        ok = isinstance(self.confidence, (int, float)) and not isinstance(self.confidence, bool)
        require(ok and math.isfinite(self.confidence), "confidence", self.confidence,
                "a finite number on the scorer's scale (likelihood: 0 to 1)")


@register("confident_consistency", ConfidentConsistencyParams)
def confident_consistency(problem: Problem, task: Task, generator: Generator,
                          scorer: Scorer | None, params: ConfidentConsistencyParams) -> Solution:
    """Sample one batch at a time until an answer is confident or very likely the majority;
    answer with the score-weighted vote."""
    scorer = require_scorer(scorer, "confident_consistency")
    meter, cands = _sample_until(problem, task, generator, scorer, params, lambda cands:
                                 confident_should_stop([task.answer_key(c.answer) for c in cands],
                                                       [c.score for c in cands],
                                                       params.confidence, params.threshold))
    return finish(meter, "confident_consistency", params, cands,
                  vote(task, cands, [c.score or 0.0 for c in cands]), samples=len(cands))


# -- DeepConf ------------------------------------------------------------------------------
@dataclass
class DeepConfParams(NParams):
    """Confidence-filtered voting with early termination of low-confidence traces."""

    n: int = 16
    warmup: int = 4  # traces generated in full to set the confidence threshold
    percentile: float = 10.0  # threshold percentile: 10 keeps ~90% of traces, 90 keeps ~10%
    window: int = 16  # tokens per group (sliding window of token confidences)
    top_logprobs: int = 5  # alternatives per token that define token confidence
    chunk: int = 32  # tokens generated between confidence checks of a later trace

    def validate(self) -> None:
        super().validate()
        require(1 <= self.warmup <= self.n, "warmup", self.warmup, f"1 <= warmup <= n={self.n}")
        require(0 <= self.percentile <= 100, "percentile", self.percentile, "0 to 100")
        require(self.window >= 1, "window", self.window, ">= 1")
        require(self.top_logprobs >= 1, "top_logprobs", self.top_logprobs, ">= 1")
        require(self.chunk >= 1, "chunk", self.chunk, ">= 1")


def token_confidences(c: Completion) -> list[float]:
    """C_i = -mean of the top-k logprobs at each position (the sampled token's when absent)."""
    out = []
    for i, lp in enumerate(c.logprobs or []):
        top = c.top_logprobs[i] if c.top_logprobs and i < len(c.top_logprobs) else {}
        vals = list(top.values()) or [lp]
        out.append(-float(np.mean(vals)))
    return out


def lowest_group_confidence(conf: Sequence[float], window: int, full_only: bool = False) -> float:
    """Minimum sliding-window mean of token confidences (the whole trace when it is shorter).

    With `full_only`, a trace shorter than a window has no group yet and scores +inf.
    """
    if len(conf) < window:
        return float("inf") if full_only or not conf else float(np.mean(conf))
    c = np.cumsum(np.concatenate([[0.0], np.asarray(conf, dtype=float)]))
    return float(np.min((c[window:] - c[:-window]) / window))


@register("deepconf", DeepConfParams)
def deepconf(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
             params: DeepConfParams) -> Solution:
    """DeepConf online: warm-up, threshold, early termination, confidence-weighted vote."""
    meter = Meter()
    k = params.top_logprobs
    comps = draw(meter, generator, [problem.prompt],
                 [sampling(params, n=params.warmup, logprobs=True, top_logprobs=k)])[0]
    if any(c.token_ids and c.logprobs is None for c in comps):
        raise TTScaleError("deepconf needs the policy's logprobs; the generator returned none "
                           "(use a backend that supports logprobs)")
    traces: list[dict] = [{"text": c.text, "conf": token_confidences(c), "done": True,
                           "warmup": True} for c in comps]
    lowest = [lowest_group_confidence(t["conf"], params.window) for t in traces if t["conf"]]
    # empty warm-up traces carry no confidence; with none at all, nothing is filtered
    threshold = float(np.percentile(lowest, params.percentile)) if lowest else -np.inf
    call = 1
    active: list[dict] = []
    if params.n > params.warmup:
        active = [{"text": "", "conf": [], "done": False, "warmup": False}
                  for _ in range(params.n - params.warmup)]
        traces += active
    while active:
        if call == 1:  # all later traces share the prompt: one request with n samples
            prompts = [problem.prompt]
            sps = [sampling(params, n=len(active), call=call, logprobs=True, top_logprobs=k,
                            max_tokens=min(params.chunk, params.max_tokens))]
        else:
            prompts = [problem.prompt + t["text"] for t in active]
            sps = [sampling(params, call=call * 100_003 + j, logprobs=True, top_logprobs=k,
                            max_tokens=min(params.chunk, params.max_tokens - len(t["conf"])))
                   for j, t in enumerate(active)]
        out = draw(meter, generator, prompts, sps)
        new_comps = out[0] if call == 1 else [cs[0] for cs in out]
        call += 1
        still = []
        for t, c in zip(active, new_comps):
            t["text"] += c.text
            t["conf"] += token_confidences(c)
            if lowest_group_confidence(t["conf"], params.window, full_only=True) < threshold:
                t["terminated"] = True  # early termination: a full window fell below
            elif (c.finish_reason == "stop" or not c.token_ids
                  or len(t["conf"]) >= params.max_tokens):
                t["done"] = True
            else:
                still.append(t)
        active = still
    cands: list[Candidate] = []
    weights: list[float] = []
    for t in traces:
        low = lowest_group_confidence(t["conf"], params.window)
        kept = not t.get("terminated") and low >= threshold
        cands.append(candidate(task, t["text"], confidence=low, kept=kept, warmup=t["warmup"],
                               terminated=bool(t.get("terminated")), tokens=len(t["conf"])))
        weights.append(low if kept else 0.0)
    voters = [c if c.meta["kept"] else Candidate("", None) for c in cands]
    chosen = vote(task, voters, weights)
    if chosen is None:
        chosen = vote(task, cands)  # no surviving trace answered: plain majority of all
    return finish(meter, "deepconf", params, cands, chosen, threshold=threshold,
                  kept=sum(bool(c.meta["kept"]) for c in cands), samples=len(cands))
