"""The policy as its own verifier: a solution's score is how likely the policy found its tokens.

A solution's score is the geometric mean probability of its sampled tokens under the policy,
exp(mean log p), read from the logprobs the engine returns with the sample (the model's own
distribution, before temperature), so it costs no FLOPs beyond sampling. Ranking samples by it
is ranking by mean log-likelihood, the "average log-probability" baseline of the
self-consistency paper (Wang et al. 2023) and the token-confidence idea of DeepConf (Fu et al.
2025) with the sampled token as the confidence.

Why it works where a separate verifier of the same size did not (docs/results.md, "Verifiers"):
a sample's error is usually one slip, a token the sampler drew from the tail of the policy's
distribution, and the policy knows that it was unlikely. The score tells right from wrong
samples of the same problem only where errors are such slips; an error the policy makes with
confidence (its greedy answer's own mistakes) is invisible to it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ttscale.errors import TTScaleError
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.types import Completion, Problem, Usage


def mean_logprob(logprobs: Sequence[float]) -> float:
    """Mean log-probability of the tokens (-inf for none: an empty solution is never chosen)."""
    return sum(logprobs) / len(logprobs) if logprobs else -math.inf


def likelihood(completion: Completion) -> float:
    """exp(mean log p) of a completion's sampled tokens, in [0, 1]."""
    if completion.logprobs is None:
        raise TTScaleError("the likelihood scorer needs the policy's logprobs; sample with "
                           "logprobs=True")
    return math.exp(mean_logprob(completion.logprobs))


class LikelihoodScorer:
    """Scores the policy's own completions by their likelihood; needs their logprobs."""

    name = "likelihood"
    needs_logprobs = True  # strategies sample with logprobs when their scorer says so
    top_logprobs = 0

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        if completions is None or len(completions) != len(solutions):
            raise TTScaleError("the likelihood scorer scores the policy's own completions; pass "
                               "them with their logprobs (one per solution)")
        return ScoreBatch([Scored(likelihood(c)) for c in completions], Usage())
