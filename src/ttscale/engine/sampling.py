"""Sampling parameters (validation) and batched sampling without per-row loops or device syncs.

Randomness comes from a counter-based generator: the noise of sample j of a request at its t-th
token is a hash of (seed, j, t, token id). A seeded request therefore draws the same samples
whatever else shares its batch, on any device, and sample j does not depend on n. Sampling
uses the Gumbel-max trick on the temperature-scaled, top-k / top-p / min-p filtered logits,
which draws exactly from the softmax distribution; on the CPU, for a large vocabulary, the noise
is hashed only for the tokens that can still win (`gumbel_argmax`). min-p (Nguyen et al., 2024)
keeps the tokens whose probability after temperature is at least `min_p` times the most likely
token's.
"""
from __future__ import annotations

import math
import random
from dataclasses import fields

import torch

from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.types import SamplingParams

MAX_N = 1024
MAX_TOP_LOGPROBS = 20
M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # below 2**31, so a product with a 32-bit value fits in int64


def make_params(**options) -> SamplingParams:
    """SamplingParams from keyword options; an unknown option names the accepted ones."""
    names = [f.name for f in fields(SamplingParams)]
    for key in options:
        if key not in names:
            raise unknown("sampling option", key, names)
    params = SamplingParams(**options)
    check_params(params)
    return params


def check_params(p: SamplingParams, context_length: int | None = None) -> None:
    """Raise TTScaleError naming the first bad value and its accepted range."""
    if not isinstance(p, SamplingParams):
        raise TTScaleError(f"params must be a SamplingParams, got {type(p).__name__}")
    if isinstance(p.n, bool) or not isinstance(p.n, int) or not 1 <= p.n <= MAX_N:
        raise out_of_range("n", p.n, f"an integer in 1..{MAX_N}")
    limit = context_length if context_length else 2**31
    if isinstance(p.max_tokens, bool) or not isinstance(p.max_tokens, int) or not 1 <= p.max_tokens <= limit:
        raise out_of_range("max_tokens", p.max_tokens, f"an integer in 1..{limit}"
                           + (" (the model's context)" if context_length else ""))
    if not isinstance(p.temperature, (int, float)) or not math.isfinite(p.temperature) or p.temperature < 0:
        raise out_of_range("temperature", p.temperature, "a finite number >= 0 (0 means greedy)")
    if not isinstance(p.top_p, (int, float)) or not 0 < p.top_p <= 1:
        raise out_of_range("top_p", p.top_p, "a number in (0, 1]")
    if isinstance(p.min_p, bool) or not isinstance(p.min_p, (int, float)) or not 0 <= p.min_p <= 1:
        raise out_of_range("min_p", p.min_p, "a number in [0, 1] (0 means off)")
    if isinstance(p.top_k, bool) or not isinstance(p.top_k, int) or p.top_k < 0:
        raise out_of_range("top_k", p.top_k, "an integer >= 0 (0 means off)")
    if isinstance(p.top_logprobs, bool) or not isinstance(p.top_logprobs, int) \
            or not 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS:
        raise out_of_range("top_logprobs", p.top_logprobs, f"an integer in 0..{MAX_TOP_LOGPROBS}")
    if p.seed is not None and (isinstance(p.seed, bool) or not isinstance(p.seed, int)):
        raise out_of_range("seed", p.seed, "an integer or None")
    stops = normalize_stop(p.stop)
    if any(not isinstance(s, str) or not s for s in stops):
        raise out_of_range("stop", p.stop, "a list of non-empty strings")


def normalize_stop(stop) -> list[str]:
    """OpenAI accepts a single string or a list; None means no stop strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return list(stop)


def _mix_py(x: int) -> int:
    x = ((x >> 16) ^ x) * _MUL & M32
    x = ((x >> 16) ^ x) * _MUL & M32
    return (x >> 16) ^ x


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = ((x >> 16) ^ x) * _MUL & M32
    x = ((x >> 16) ^ x) * _MUL & M32
    return (x >> 16) ^ x


def sample_key(seed: int | None, index: int) -> int:
    """The 32-bit stream key of sample `index` of a request (a random seed when None)."""
    if seed is None:
        seed = random.SystemRandom().getrandbits(63)
    seed &= (1 << 64) - 1
    return _mix_py(_mix_py(_mix_py(seed & M32) ^ (seed >> 32)) ^ (index & M32) ^ 0x9E3779B9)


# The largest float32 below 1. The top 24-bit value, (2**24 - 0.5) / 2**24, rounds to 1.0 in
# float32, whose Gumbel noise is infinite: that token would win whatever its probability. With
# a 262,144-token vocabulary (Gemma 3) that is one row in 64 at every step; so it is clamped.
U_MAX = 1.0 - 2.0 ** -24
U_MIN = 0.5 / (1 << 24)
# The widest gap two tokens' Gumbel noises can have: a token more than this below the row's best
# scaled logit can never be drawn, so its noise need not be computed.
GUMBEL_SPAN = math.log(-math.log(U_MIN)) - math.log(-math.log(U_MAX))
# Below this vocabulary the dense hash costs less than finding the candidates (about 0.2 ms a
# step for 64 rows of 100 tokens, which the search would raise by half).
SPARSE_NOISE_VOCAB = 4096


def _row_keys(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    return _mix(keys ^ _mix(steps & M32))


def _token_keys(tokens: torch.Tensor) -> torch.Tensor:
    return _mix(tokens + 0x632BE5AB)


def _uniform(row_keys: torch.Tensor, token_keys: torch.Tensor) -> torch.Tensor:
    h = _mix((row_keys ^ token_keys) & M32)
    return (((h >> 8).float() + 0.5) * (1.0 / (1 << 24))).clamp_max(U_MAX)


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel noise from uniforms; one definition, so both forms of `gumbel_argmax` add the
    same bits and draw the same token."""
    return -torch.log(-torch.log(u))


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, vocab] uniforms in (0, 1), a pure function of (key, step, token id)."""
    tokens = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    return _uniform(_row_keys(keys, steps)[:, None], _token_keys(tokens)[None, :])


def gumbel_argmax(scaled: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """argmax(scaled + Gumbel noise) per row, the noise of `uniform_noise`.

    On the CPU the noise is computed only for the tokens within GUMBEL_SPAN of their row's best
    (with a 262k vocabulary the full [R, V] hash was a quarter of a decode step); the result is
    the same token, ties included (the lowest id wins, as argmax). On other devices, or when the
    candidates are many or the vocabulary small, the dense form, which needs no device sync."""
    rows_n, vocab = scaled.shape
    if scaled.device.type == "cpu" and vocab >= SPARSE_NOISE_VOCAB:
        top = scaled.max(-1, keepdim=True).values
        margin = GUMBEL_SPAN + 0.01 + 1e-5 * top.abs()  # float32 rounding of large logits
        rows, toks = (scaled >= top - margin).nonzero(as_tuple=True)
        if rows.numel() <= scaled.numel() // 4:
            u = _uniform(_row_keys(keys, steps)[rows], _token_keys(toks))
            val = scaled[rows, toks] + _gumbel(u)
            best = val.new_full((rows_n,), float("-inf")).scatter_reduce(0, rows, val, "amax")
            win = val == best[rows]
            return toks.new_full((rows_n,), vocab).scatter_reduce(0, rows[win], toks[win], "amin")
    return (scaled + _gumbel(uniform_noise(keys, steps, vocab))).argmax(-1)


class RowParams:
    """Per-row sampling settings as device tensors, plus what Python needs to skip work."""

    def __init__(self, temperature: list[float], top_p: list[float], top_k: list[int],
                 keys: list[int], device: torch.device, min_p: list[float] | None = None):
        self.temperature = torch.tensor(temperature, dtype=torch.float32, device=device)
        self.top_p = torch.tensor(top_p, dtype=torch.float32, device=device)
        self.top_k = torch.tensor(top_k, dtype=torch.int64, device=device)
        min_p = [0.0] * len(temperature) if min_p is None else min_p
        self.min_p = torch.tensor(min_p, dtype=torch.float32, device=device)
        self.keys = torch.tensor(keys, dtype=torch.int64, device=device)
        self.any_greedy = any(t == 0 for t in temperature)
        self.all_greedy = all(t == 0 for t in temperature)
        self.any_filter = any(p < 1 for p in top_p) or any(k > 0 for k in top_k) \
            or any(m > 0 for m in min_p)

    @classmethod
    def of(cls, params: list[SamplingParams], keys: list[int], device: torch.device) -> "RowParams":
        """The rows' settings from their requests' SamplingParams (every filter included)."""
        return cls([p.temperature for p in params], [p.top_p for p in params],
                   [p.top_k for p in params], keys, device,
                   [float(getattr(p, "min_p", 0.0)) for p in params])


def sample(logits: torch.Tensor, rp: RowParams, steps: torch.Tensor) -> torch.Tensor:
    """One token per row of `logits` [R, V] (float32); rows with temperature 0 take the argmax."""
    greedy = logits.argmax(-1) if rp.any_greedy else None
    if rp.all_greedy:
        return greedy
    t = rp.temperature.clamp_min(1e-5)[:, None]
    scaled = logits / t
    if rp.any_filter:
        scaled = _filter(scaled, rp.top_k, rp.top_p, rp.min_p)
    drawn = gumbel_argmax(scaled, rp.keys, steps)
    if greedy is None:
        return drawn
    return torch.where(rp.temperature == 0, greedy, drawn)


def _filter(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
            min_p: torch.Tensor | None = None) -> torch.Tensor:
    """Mask (to -inf) the tokens outside each row's top-k and top-p nucleus, in that order,
    and those below min_p x the top token's probability (the top token always stays)."""
    vocab = scaled.shape[-1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))[:, None]
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the better tokens
    remove = (before >= top_p[:, None]) & (ranks > 0)
    remove |= ranks >= k
    if min_p is not None:  # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p)
        floor = sorted_logits[:, :1] + torch.log(min_p.clamp_min(1e-30))[:, None]
        remove |= (sorted_logits < floor) & (min_p[:, None] > 0) & (ranks > 0)
    mask = torch.zeros_like(remove).scatter(1, order, remove)
    return scaled.masked_fill(mask, float("-inf"))
