"""Self-certainty (Kang et al. 2025): a reward-free score from the policy's own logprobs.

Per generated token, KL(U || p) between the uniform distribution over the vocabulary and the
model's next-token distribution p; a solution's score is the mean over its tokens. A confident
(peaked) p is far from uniform, so higher means more certain.

Exact self-certainty needs the full distribution; generators return only the top-k logprobs.
Two approximations, documented here because they change the numbers:

* `vocab_size` known: the k listed tokens keep their probabilities and the remaining mass is
  spread evenly over the other V - k tokens, then KL(U || p) = -log V - (1/V) * sum_j log p_j
  is computed for that completed distribution. By concavity of log, the even spread is the
  completion with the smallest KL, so the score is a lower bound of the exact one (exact when
  the tail is flat);
* `vocab_size` unknown: KL(U_k || p_k) over the top-k tokens renormalised, the same measure
  restricted to the candidates the model considered.

Both need `logprobs=True` with `top_logprobs >= 2` when sampling; with only the sampled token's
logprob the score falls back to that token (vocabulary known) or to 0 (unknown).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ttscale.errors import TTScaleError
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.types import Completion, Problem, Usage

DEFAULT_TOP_LOGPROBS = 20  # the OpenAI API's maximum


def token_self_certainty(logprobs: Sequence[float], vocab_size: int | None) -> float:
    """KL(U || p) at one position from the logprobs of its top-k tokens (see module doc)."""
    lps = [lp for lp in logprobs if lp > -math.inf]
    if not lps:
        return 0.0
    if vocab_size is None or vocab_size <= len(lps):
        if len(lps) < 2:
            return 0.0
        top = max(lps)
        log_z = top + math.log(sum(math.exp(lp - top) for lp in lps))
        k = len(lps)
        return -math.log(k) - sum(lp - log_z for lp in lps) / k
    rest = max(1.0 - sum(math.exp(lp) for lp in lps), 1e-12)
    others = vocab_size - len(lps)
    total = sum(lps) + others * math.log(rest / others)
    return -math.log(vocab_size) - total / vocab_size


def self_certainty(completion: Completion, vocab_size: int | None = None) -> float:
    """Mean per-token self-certainty of one completion (0 for an empty one)."""
    if completion.logprobs is None and completion.top_logprobs is None:
        raise TTScaleError("self-certainty needs the policy's logprobs; sample with "
                           "logprobs=True and top_logprobs >= 2")
    positions = completion.top_logprobs or [{} for _ in completion.logprobs or []]
    values = []
    for i, top in enumerate(positions):
        lps = list(top.values())
        if not lps and completion.logprobs is not None and i < len(completion.logprobs):
            lps = [completion.logprobs[i]]
        values.append(token_self_certainty(lps, vocab_size))
    return sum(values) / len(values) if values else 0.0


class SelfCertaintyScorer:
    """Scores completions by self-certainty; needs the completions the policy returned."""

    name = "self-certainty"
    needs_logprobs = True  # strategies sample with logprobs when their scorer says so
    top_logprobs = DEFAULT_TOP_LOGPROBS

    def __init__(self, vocab_size: int | None = None) -> None:
        self.vocab_size = vocab_size

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        if completions is None or len(completions) != len(solutions):
            raise TTScaleError("self-certainty scores the policy's own completions; pass them "
                               "with their logprobs (one per solution)")
        return ScoreBatch([Scored(self_certainty(c, self.vocab_size)) for c in completions],
                          Usage())
