"""Paged KV (engine/paged.py and the engine on it): the block pool's reference counts and
copy-on-write, paged decoding equal to one block a sequence (the dense layout) on every
architecture, sample isolation in a shared block, preemption under a tight bound giving the
unbounded outputs and streams, and chunked prefill equal to one pass."""
from __future__ import annotations

import pytest
import torch
from test_engine_torch import mistral_dir, qwen2_dir  # noqa: F401 - fixtures
from test_gemma3 import gemma_dir  # noqa: F401 - fixture

from ttscale.engine import TorchEngine
from ttscale.engine.paged import SCRATCH, BlockPool, PagedKV, Plane, PoolFull
from ttscale.errors import TTScaleError
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

PLANE = Plane(n_layer=2, n_kv_head=1, head_dim=3, dtype=torch.float32)
LONG = "Q: " + "+".join(str(i % 89) for i in range(14)) + "\n"  # 36 tokens
DENSE = 4096  # a block longer than any context here: one block a sequence, the dense layout


# --- the pool ----------------------------------------------------------------------------------
def test_pool_counts_references_and_reuses_freed_blocks():
    pool = BlockPool([PLANE], 4, "cpu")
    a = pool.allocate(3)
    assert SCRATCH not in a and len(set(a)) == 3 and pool.used == 3
    pool.share(a[:2])
    assert [pool.refs[i] for i in a] == [2, 2, 1]
    pool.release(a)
    assert [pool.refs[i] for i in a] == [1, 1, 0] and pool.used == 2
    assert pool.allocate(1) == [a[2]]  # the freed block is handed out again
    pool.release(a)
    assert pool.used == 0 and sum(pool.refs) == 0
    with pytest.raises(AssertionError, match="is free"):
        pool.release([a[0]])


def test_a_bounded_pool_refuses_past_its_capacity_and_an_unbounded_one_grows():
    pool = BlockPool([PLANE], 4, "cpu", capacity=5)
    ids = pool.allocate(5)
    with pytest.raises(PoolFull):
        pool.allocate(1)
    pool.release(ids[:1])
    assert pool.allocate(1) == ids[:1] and pool.n_blocks == 5
    free = BlockPool([PLANE], 4, "cpu")
    free.allocate(100)
    assert free.n_blocks >= 100 and free.nbytes == (free.n_blocks + 1) * PLANE.block_bytes(4)


def test_copy_on_write_copies_a_shared_block_only():
    pool = BlockPool([PLANE], 4, "cpu")
    [b] = pool.allocate(1)
    pool.kv[0][:, :, b] = 7.0
    assert pool.copy_on_write(b) == b  # not shared: written in place
    pool.share([b])
    c = pool.copy_on_write(b)
    assert c != b and pool.refs[b] == 1 and pool.refs[c] == 1
    assert torch.equal(pool.kv[0][:, :, c], pool.kv[0][:, :, b])


def test_writes_after_copy_on_write_stay_in_their_own_sequence():
    """Two sequences share a partly filled block; each copies it before writing a different
    token at the same position: each reads its own token and the shared prefix."""
    pool = BlockPool([PLANE], 4, "cpu")
    prompt = pool.allocate(2)  # positions 0..5: one full block and a partial one
    pool.kv[0][:, :, prompt] = torch.randn(2, 2, 2, 1, 4, 3)
    seqs = [list(prompt), list(prompt)]
    pool.share(prompt)
    tables = torch.full((2, 3), SCRATCH)
    for s in seqs:  # what the engine does before a row writes into block 1
        s[1] = pool.copy_on_write(s[1])
    tables[:, :2] = torch.tensor(seqs)
    cache = PagedKV(pool, tables, scratch=12)
    pos = torch.tensor([[6], [6]])
    k = torch.tensor([1.0, -1.0])[:, None, None, None].expand(2, 1, 1, 3)
    cache.write(0, cache.slots(0, pos), k, k)
    keys, _ = cache.read(0, 0, 2, 7)
    assert torch.equal(keys[0, 0, 6], torch.ones(3)) and torch.equal(keys[1, 0, 6], -torch.ones(3))
    assert torch.equal(keys[0, :, :6], keys[1, :, :6])  # the prefix is the prompt's in both


# --- the engine on the pool --------------------------------------------------------------------
def _workload():
    return [Req("Q: 12+7*3\n", SP(n=4, temperature=1.0, max_tokens=30, seed=3, logprobs=True)),
            Req(LONG, SP(temperature=0, max_tokens=30, logprobs=True)),
            Req("x", SP(n=3, temperature=0.8, max_tokens=25, seed=9, logprobs=True))]


def _assert_same(ref, got):
    for a, b in zip(ref, got):
        assert a.error is None and b.error is None
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
        for ca, cb in zip(a.completions, b.completions):
            assert max((abs(x - y) for x, y in zip(ca.logprobs, cb.logprobs)), default=0) < 1e-4


def _assert_pool_empty(eng: TorchEngine):
    assert eng.pool.used == 0 and sum(eng.pool.refs) == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma3"])
def test_paged_decoding_equals_one_block_a_sequence(arch, request):
    """Blocks of 3 positions (prompts across many blocks, shared by the samples, the last one
    copied on write) against the dense layout, greedy and sampled, with logprobs; Mistral's
    window (12) and Gemma 3's local layers (8) are shorter than the sequences."""
    d = request.getfixturevalue({"llama": "random_model_dir", "qwen2": "qwen2_dir",
                                 "mistral": "mistral_dir", "gemma3": "gemma_dir"}[arch])
    paged = TorchEngine(d, kv_block=3, prefix_cache_bytes=0)
    dense = TorchEngine(d, kv_block=DENSE, prefix_cache_bytes=0)
    got, ref = paged.generate(_workload()), dense.generate(_workload())
    _assert_same(ref, got)
    assert paged.pool.n_blocks > 20 and dense.pool.n_blocks >= 1
    _assert_pool_empty(paged)


def test_samples_in_a_shared_block_do_not_see_each_other(random_model_dir):
    """n samples share the prompt's partly filled last block and write different tokens into
    it: each must decode as if alone (one row at a time, nothing shared). Sharing by aliasing
    would let a sample attend to its siblings' keys there and change its logprobs."""
    prompt = "Q: 8-2+9\n"  # its last block (of 16) is partly filled
    req = Req(prompt, SP(n=6, temperature=1.5, max_tokens=20, seed=11, logprobs=True))
    shared = TorchEngine(random_model_dir, prefix_cache_bytes=0)
    alone = TorchEngine(random_model_dir, prefix_cache_bytes=0, max_batch_size=1)
    assert len(shared.tokenize(prompt)) % shared.kv_block
    got, ref = shared.generate([req]), alone.generate([req])
    assert len({tuple(c.token_ids[:3]) for c in ref[0].completions}) > 1  # the samples differ
    _assert_same(ref, got)
    _assert_pool_empty(shared)


def test_reference_counts_return_to_zero_after_every_request(random_model_dir):
    eng = TorchEngine(random_model_dir, kv_block=4)
    for r in _workload() + [Req("Q: 1+1\n", SP(n=5, temperature=1.0, stop=["\n"], max_tokens=40, seed=1))]:
        eng.generate([r])
        _assert_pool_empty(eng)
    h = eng.submit(Req(LONG, SP(n=8, temperature=1.0, max_tokens=60)))
    eng.step(), eng.step()
    assert eng.pool.used > 0
    h.cancel()
    eng.step()
    assert h.result.error == "cancelled"
    _assert_pool_empty(eng)


def _streams(eng: TorchEngine, reqs: list[Req], bound: int | None = None):
    """Run `reqs`, collecting each handle's polled tokens per sample (and checking the pool's
    bytes against `bound` after every step)."""
    handles = [eng.submit(r) for r in reqs]
    polled = [[[] for _ in range(r.params.n)] for r in reqs]
    while eng.step():
        if bound is not None:
            assert eng.pool.nbytes <= bound
        for h, p in zip(handles, polled):
            for s in h.poll_tokens():
                p[s.j] += s.ids
    for h, p in zip(handles, polled):
        for s in h.poll_tokens():
            p[s.j] += s.ids
    return [h.result for h in handles], polled


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_preemption_under_a_tight_bound_gives_the_unbounded_outputs_and_streams(arch, request):
    """The smallest pool (one sequence of the context) for a workload over four times that:
    rows are preempted and
    restarted, and the outputs, logprobs and polled streams (no token twice, none changed)
    are those of an unbounded run; the pool never exceeds the bound; every block comes back."""
    d = request.getfixturevalue({"llama": "random_model_dir", "gemma3": "gemma_dir"}[arch])
    ctx = 96
    free = TorchEngine(d, max_seq_len=ctx, kv_block=4)
    bound = free.min_kv_memory
    tight = TorchEngine(d, max_seq_len=ctx, kv_block=4, kv_memory=bound)
    reqs = [Req(LONG, SP(n=6, temperature=1.0, max_tokens=40, seed=5, logprobs=True)),
            Req("Q: 3*4\n", SP(n=5, temperature=0, max_tokens=45, logprobs=True))]
    ref, ref_streams = _streams(free, reqs)
    got, got_streams = _streams(tight, reqs, bound)
    assert tight.preemptions > 0
    assert free.peak_decode_kv_bytes > 4 * bound and tight.peak_decode_kv_bytes <= bound
    _assert_same(ref, got)
    assert got_streams == ref_streams
    _assert_pool_empty(tight)


def test_speculative_decoding_under_preemption_stays_identical(random_model_dir):
    free = TorchEngine(random_model_dir, max_seq_len=96, kv_block=4)
    spec = TorchEngine(random_model_dir, max_seq_len=96, kv_block=4,
                       speculative={"draft": random_model_dir, "k": 3})
    tight = TorchEngine(random_model_dir, max_seq_len=96, kv_block=4, kv_memory=2 * spec.min_kv_memory,
                        speculative={"draft": random_model_dir, "k": 3})
    reqs = [Req(LONG, SP(n=6, temperature=0, max_tokens=40, logprobs=True)),
            Req("Q: 3*4\n", SP(n=4, temperature=0, max_tokens=45, logprobs=True))]
    ref, got = free.generate(reqs), tight.generate(reqs)
    assert tight.preemptions > 0
    _assert_same(ref, got)
    _assert_pool_empty(tight)


def test_chunked_prefill_equals_one_pass(random_model_dir):
    """prefill_tokens=8: a 36-token prompt is computed in chunks of at most 8 queries (the
    masks built say so), with the tokens and logprobs of one pass."""
    one = TorchEngine(random_model_dir, prefix_cache_bytes=0)
    chunked = TorchEngine(random_model_dir, prefix_cache_bytes=0, prefill_tokens=8)
    queries = []
    forward = chunked._forward

    def recording(tokens, pos, cache, row0, kv_len, mask, *rest, **kw):
        queries.append(tokens.shape[1])
        return forward(tokens, pos, cache, row0, kv_len, mask, *rest, **kw)

    chunked._forward = recording
    reqs = [Req(LONG, SP(n=2, temperature=1.0, max_tokens=20, seed=2, logprobs=True)),
            Req("Q: 5*5\n", SP(temperature=0, max_tokens=20, logprobs=True))]
    assert len(one.tokenize(LONG)) > 30
    _assert_same(one.generate(reqs), chunked.generate(reqs))
    assert max(queries) <= 8 and queries.count(8) >= 3


def test_kv_options_are_checked_at_start_up(random_model_dir):
    with pytest.raises(TTScaleError, match=r"kv_block=0 is out of range; accepted: an integer >= 1"):
        TorchEngine(random_model_dir, kv_block=0)
    with pytest.raises(TTScaleError, match=r"kv_block=8 differs from the sparse_attention block \(16\)"):
        TorchEngine(random_model_dir, kv_block=8, sparse_attention="block=16")
    eng = TorchEngine(random_model_dir, max_seq_len=64, kv_block=4)
    with pytest.raises(TTScaleError, match=rf"kv_memory={eng.min_kv_memory - 1} is too small; "
                                           rf"accepted: at least {eng.min_kv_memory} bytes"):
        TorchEngine(random_model_dir, max_seq_len=64, kv_block=4, kv_memory=eng.min_kv_memory - 1)
    assert eng.min_kv_memory == (64 // 4 + 1) * eng.block_bytes


@pytest.mark.parametrize("h, g", [(4, 4), (8, 2)])
def test_in_place_decode_attention_equals_sdpa_over_the_gathered_rows(h, g):
    """Rows sharing their first blocks (read once by all their readers), blocks of one row each
    (visited in place), rows of different lengths under a causal mask, GQA: the in-place
    attention equals SDPA over each row's gathered positions."""
    from ttscale.engine import paged_attention

    gen = torch.Generator().manual_seed(3)
    pool = BlockPool([Plane(1, g, 8, torch.float32)], 4, "cpu")
    pool.kv[0].normal_(generator=gen)  # (the pool grows below; the new blocks are filled too)
    prompt = pool.allocate(2)
    lengths = [19, 11, 17, 6]
    tables = torch.full((4, 6), SCRATCH)
    for r, m in enumerate(lengths):
        nb = -(-m // 4)
        own = pool.allocate(nb - 2) if r < 3 else []
        tables[r, :nb] = torch.tensor((prompt if r < 3 else pool.allocate(2)) + own)
    pool.kv[0].normal_(generator=gen)
    cache = PagedKV(pool, tables, scratch=24)
    kv_len = max(lengths)
    q = torch.randn(4, h, 1, 8, generator=gen)
    mask = (torch.arange(kv_len)[None, :] < torch.tensor(lengths)[:, None]).view(4, 1, 1, kv_len)
    k, v = cache.read(0, 0, 4, kv_len)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=g != h)
    assert paged_attention.plan(tables[:, :-(-kv_len // 4)]) is None  # 4 rows: gathered
    p = paged_attention.plan(tables[:, :-(-kv_len // 4)], min_rows=1)
    assert p is not None and p.shared.tolist() == sorted(prompt) and p.readers.shape == (2, 3)
    y = paged_attention.attend(p, q, pool.kv[0][0, 0], pool.kv[0][0, 1], mask, kv_len)
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.allclose(cache.attend(0, q, 0, 4, kv_len, mask), ref, atol=1e-5)


def test_a_large_batch_decodes_in_place_with_the_outputs_of_a_gathering_one(random_model_dir):
    """40 rows (in place) against the same requests 20 rows at a time (gathered)."""
    reqs = [Req(LONG, SP(n=24, temperature=1.0, max_tokens=24, seed=4, logprobs=True)),
            Req("Q: 7*7\n", SP(n=16, temperature=0.7, max_tokens=24, seed=6, logprobs=True))]
    wide = TorchEngine(random_model_dir, kv_block=4, prefix_cache_bytes=0)
    narrow = TorchEngine(random_model_dir, kv_block=4, prefix_cache_bytes=0, max_batch_size=20)
    _assert_same(narrow.generate(reqs), wide.generate(reqs))
