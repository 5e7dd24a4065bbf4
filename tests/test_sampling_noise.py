"""The sampler's Gumbel noise: finite for every hash value, and computed only where it can
change the draw without changing which token is drawn."""
from __future__ import annotations

import torch

from ttscale.engine.sampling import RowParams, sample, uniform_noise
from ttscale.types import SamplingParams


def _rows(rows: int, temperature: float = 1.0) -> RowParams:
    params = [SamplingParams(temperature=temperature)] * rows
    return RowParams.of(params, [1000 + i for i in range(rows)], torch.device("cpu"))


def test_a_token_far_below_the_best_is_never_drawn_in_a_large_vocabulary():
    """Token 0 holds all but e^-30 of the mass; in a 262k vocabulary (Gemma 3) the noise's top
    value used to round to 1.0, an infinite noise, and a random token won one row in 64
    (262,144 / 2**24) at every step."""
    vocab, rows = 262_144, 16
    logits = torch.full((rows, vocab), -30.0)
    logits[:, 0] = 0.0
    rp = _rows(rows)
    for step in range(40):
        drawn = sample(logits, rp, torch.full((rows,), step))
        assert drawn.tolist() == [0] * rows, f"step {step}: {drawn.tolist()}"


def test_noise_stays_inside_the_open_unit_interval():
    u = uniform_noise(torch.arange(64), torch.arange(64), 262_144)
    assert 0 < u.min() and u.max() < 1 and torch.isfinite(torch.log(-torch.log(u))).all()


def test_draws_equal_the_dense_gumbel_max_over_the_whole_vocabulary():
    gen = torch.Generator().manual_seed(0)
    for vocab, spread, temperature in [(262_144, 3.0, 0.7), (50, 1.0, 1.0), (5000, 20.0, 1.3)]:
        rows = 8
        rp = _rows(rows, temperature)
        for step in range(10):
            logits = torch.randn(rows, vocab, generator=gen) * spread
            logits[: rows // 2, : vocab // 3] = float("-inf")  # as top-k / top-p leave them
            steps = torch.full((rows,), step)
            scaled = logits / temperature
            u = uniform_noise(rp.keys, steps, vocab)
            dense = (scaled - torch.log(-torch.log(u))).argmax(-1)
            assert torch.equal(sample(logits, rp, steps), dense)
