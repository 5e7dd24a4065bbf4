"""The engine's KV memory bound: a workload far above it runs within it, outputs unchanged."""
from __future__ import annotations

import pytest

from ttscale.engine import TorchEngine
from ttscale.errors import TTScaleError
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

CONTEXT = 128  # max_seq_len: keeps the smallest allowed bound (one context row) small


def _workload():
    return [Req("Q: 12+7*3\n", SP(n=16, temperature=1.0, max_tokens=40, seed=2, logprobs=True)),
            Req("Q: 8-2+9+6\n", SP(n=8, temperature=0, max_tokens=40)),
            Req("Q: 5*5-3\n=25-3\n", SP(n=2, temperature=0.7, max_tokens=90, seed=4))]


def test_workload_ten_times_the_bound_runs_within_it_unchanged(random_model_dir):
    free = TorchEngine(random_model_dir, max_seq_len=CONTEXT)
    bound = (CONTEXT + 1) * free.kv_token_bytes  # one sequence of the context
    tight = TorchEngine(random_model_dir, max_seq_len=CONTEXT, kv_memory=bound)
    ref = free.generate(_workload())
    handles = [tight.submit(r) for r in _workload()]
    while tight.step():
        assert tight.cache.nbytes <= bound
    got = [h.result for h in handles]
    assert free.peak_decode_kv_bytes >= 9 * bound  # what the workload takes unbounded
    assert tight.peak_decode_kv_bytes <= bound
    for a, b in zip(ref, got):
        assert a.error is None and b.error is None
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    assert max(abs(x - y) for x, y in zip(ref[0].completions[3].logprobs,
                                          got[0].completions[3].logprobs)) < 1e-4


def test_too_small_a_bound_is_a_startup_error(random_model_dir):
    with pytest.raises(TTScaleError, match=r"kv_memory=1000 is too small; accepted: at least \d+ bytes"):
        TorchEngine(random_model_dir, max_seq_len=CONTEXT, kv_memory=1000)
