"""Speculative decoding: draft k tokens cheaply, verify them in one forward of the target.

Drafts come from a smaller model of the same family (same tokenizer), run on a KV cache whose
rows mirror the engine's, or from prompt lookup ("ngram": the tokens that followed the latest
earlier occurrence of the sequence's last few tokens; no model). `accept` decides what each
row keeps: a greedy row keeps draft tokens while they equal the target's argmax and then takes
the target's own token, so its output is identical to plain greedy decoding; a sampled row uses
the rule of Leviathan et al. / Chen et al. (2023): keep draft token x with probability
min(1, p(x) / q(x)), at the first rejection draw from max(0, p - q) renormalised, and when all
are kept draw one more from p. The emitted tokens are then distributed exactly as the target's.
Each round emits between 1 and k + 1 tokens per row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ttscale.engine.sampling import RowParams, _filter, gumbel_argmax, uniform_noise
from ttscale.errors import TTScaleError, out_of_range, unknown

NGRAM = "ngram"
OPTIONS = ("draft", "k", "ngram")
MAX_K = 16
# stream salts: draft sampling, acceptance tests and residual draws get their own noise
SALT_DRAFT, SALT_ACCEPT, SALT_RESIDUAL = 0x5BD1E995, 0x27D4EB2F, 0x165667B1


@dataclass(frozen=True)
class SpecConfig:
    """draft: "ngram" or a model (shipped name or path); k: tokens drafted per round;
    ngram: longest n-gram prompt lookup matches (it tries shorter ones down to 1)."""

    draft: str
    k: int = 4
    ngram: int = 3


def parse_spec(spec: dict | SpecConfig | None) -> SpecConfig | None:
    """The engine option `speculative` ({"draft": ..., "k": ...}) checked; None switches it off."""
    if spec is None or isinstance(spec, SpecConfig):
        return spec
    if not isinstance(spec, dict):
        raise TTScaleError(f"speculative={spec!r} is not an object; accepted: "
                           '{"draft": "ngram" or a model, "k": 1..16}')
    for key in spec:
        if key not in OPTIONS:
            raise unknown("speculative option", key, OPTIONS)
    draft = spec.get("draft")
    if not isinstance(draft, str) or not draft:
        raise out_of_range("speculative draft", draft, '"ngram" or a model name or path')
    k, ngram = spec.get("k", 4), spec.get("ngram", 3)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise out_of_range("speculative k", k, f"an integer in 1..{MAX_K}")
    if isinstance(ngram, bool) or not isinstance(ngram, int) or not 1 <= ngram <= 8:
        raise out_of_range("speculative ngram", ngram, "an integer in 1..8")
    return SpecConfig(draft, k, ngram)


class NgramIndex:
    """Prompt lookup over one growing sequence: where each n-gram (n <= max_n) last ended."""

    def __init__(self, max_n: int):
        self.max_n = max_n
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after it
        self._indexed = 0  # n-grams ending before this index are in `_next`

    def propose(self, seq: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of seq's longest tail."""
        end = len(seq) - 1  # the tail itself (ending at `end`) must not match itself
        for e in range(self._indexed, end):
            for n in range(1, min(self.max_n, e + 1) + 1):
                self._next[tuple(seq[e - n + 1:e + 1])] = e + 1
        self._indexed = max(self._indexed, end)
        for n in range(min(self.max_n, len(seq)), 0, -1):
            j = self._next.get(tuple(seq[len(seq) - n:]))
            if j is not None:
                return seq[j:j + k]
        return []


def target_probs(logits: torch.Tensor, rp: RowParams) -> torch.Tensor:
    """[A, M, V] logits -> the sampling distribution of each row (temperature, top-k, top-p)."""
    a, m, v = logits.shape
    t = rp.temperature.clamp_min(1e-5)[:, None, None]
    scaled = logits / t
    if rp.any_filter:
        scaled = _filter(scaled.reshape(a * m, v), rp.top_k.repeat_interleave(m),
                         rp.top_p.repeat_interleave(m)).view(a, m, v)
    return scaled.softmax(-1)


def draw(probs: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor, salt: int) -> torch.Tensor:
    """One token per row of `probs` [A, V] (Gumbel-max on log-probabilities)."""
    return gumbel_argmax(probs.log(), keys ^ salt, steps)


def accept(logits: torch.Tensor, drafts: torch.Tensor, dlen: torch.Tensor, q: torch.Tensor | None,
           rp: RowParams, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify drafts; returns (kept [A], tokens [A, k + 1]): row i emits tokens[i, :kept[i] + 1].

    logits: [A, k + 1, V] the target's logits at the input token and each draft token;
    drafts: [A, k]; dlen: [A] drafts that are real (the rest is padding); q: [A, k, V] the
    distributions the drafts were drawn from, or None for deterministic drafts (prompt lookup:
    q is one-hot); steps: [A] tokens each row generated before this round (noise positions).
    """
    a, k1, v = logits.shape
    k = k1 - 1
    dev = logits.device
    idx = torch.arange(k, device=dev)[None, :]
    valid = idx < dlen[:, None]
    greedy = logits.argmax(-1)  # [A, k + 1]
    g_ok = (drafts == greedy[:, :k]) & valid
    g_kept = g_ok.long().cumprod(-1).sum(-1)
    if rp.all_greedy:
        return g_kept, greedy
    p = target_probs(logits, rp)  # [A, k + 1, V]
    p_d = p[:, :k].gather(2, drafts[:, :, None])[:, :, 0]
    q_d = p_d.new_ones(p_d.shape) if q is None else q.gather(2, drafts[:, :, None])[:, :, 0]
    u = uniform_noise(rp.keys ^ SALT_ACCEPT, steps, k)  # u[i, j]: the test of draft j
    ok = (u * q_d <= p_d) & valid
    kept = ok.long().cumprod(-1).sum(-1)
    rows = torch.arange(a, device=dev)
    p_at = p[rows, kept]  # [A, V]: the target's distribution where the round ends
    rejected = kept < dlen
    if q is None:
        q_at = torch.zeros_like(p_at)
        q_at[rows, drafts[rows, kept.clamp_max(k - 1)]] = 1.0
    else:
        q_at = q[rows, kept.clamp_max(k - 1)]
    resid = (p_at - q_at).clamp_min(0)
    mass = resid.sum(-1, keepdim=True)
    resid = torch.where(mass > 0, resid / mass.clamp_min(1e-30), p_at)
    final = torch.where(rejected[:, None], resid, p_at)
    last = draw(final, rp.keys, steps + kept, SALT_RESIDUAL)
    tokens = torch.cat([drafts, drafts[:, :1]], 1)
    tokens[rows, kept] = last
    if rp.any_greedy:
        is_greedy = rp.temperature == 0
        kept = torch.where(is_greedy, g_kept, kept)
        tokens = torch.where(is_greedy[:, None], greedy, tokens)
    return kept, tokens
