"""The prefix cache as blocks of the paged pool (engine/block_cache.py): a repeated prompt takes
the cached blocks without computing them, with the outputs of an engine whose cache is off; a
cached block is never written again; unreferenced cached blocks are evicted under a tight
kv_memory with outputs unchanged; no reference is left behind by a request."""
from __future__ import annotations

import torch

from ttscale.engine import TorchEngine
from ttscale.engine.block_cache import BlockCache
from ttscale.engine.paged import BlockPool, Plane
from ttscale.types import GenerationRequest as Req, SamplingParams as SP
from test_engine_paged import _assert_same

PLANE = Plane(n_layer=2, n_kv_head=1, head_dim=3, dtype=torch.float32)
LONG = "Q: " + "+".join(str(i % 89) for i in range(14)) + "\n"  # 36 tokens
OTHER = "Q: " + "*".join(str(i % 7) for i in range(14)) + "\n"


def _assert_unreferenced(eng: TorchEngine):
    """No row holds a block: every block is free or kept, unreferenced, by the prefix cache."""
    pool = eng.pool
    assert sum(pool.refs) == 0 and pool.used == 0
    assert pool.idle == eng.prefix.n_blocks
    assert len(pool._free) + pool.idle == pool.n_blocks


def _cached_contents(eng: TorchEngine) -> dict:
    """Each registered block's key and contents (every plane)."""
    return {b: (k, [t[:, :, b].clone() for t in eng.pool.kv]) for b, k in eng.prefix._key.items()}


# --- the pool and its index --------------------------------------------------------------------
def _pool(max_blocks: int, capacity: int | None = None) -> tuple[BlockPool, BlockCache]:
    cache = BlockCache(4, PLANE.block_bytes(4), PLANE.block_bytes(1), max_blocks * PLANE.block_bytes(4))
    return BlockPool([PLANE], 4, "cpu", capacity, cache=cache), cache


def test_released_cached_blocks_stay_idle_and_are_evicted_least_recently_used():
    pool, cache = _pool(max_blocks=8, capacity=6)
    a, b = pool.allocate(3), pool.allocate(3)
    cache.register(list(range(12)), a)  # three full blocks
    cache.register(list(range(100, 110)), b)  # two full, one of two tokens
    assert len(cache) == 22 and cache.n_blocks == 6
    pool.release(a)
    pool.release(b)
    assert pool.used == 0 and pool.idle == 6 and pool.n_free() == 6
    assert cache.match(list(range(12))) == (a, None, 0)
    full, part, m = cache.match(list(range(100, 109)))  # the partial block covers one more
    assert full == b[:2] and (part, m) == (b[2], 1)
    cache.match(list(range(12)))  # a is the most recently used now
    got = pool.allocate(2)  # no free block and no room to grow: b's, leaf first
    assert got == [b[2], b[1]] and cache.evictions == 2 and pool.idle == 4
    assert cache.match(list(range(100, 108))) == (b[:1], None, 0)
    pool.take(a)  # a hit: referenced again, out of the LRU
    assert pool.used == 5 and pool.idle == 1 and [pool.refs[i] for i in a] == [1, 1, 1]


def test_a_cached_block_is_copied_before_a_write_even_by_its_only_user():
    pool, cache = _pool(max_blocks=8)
    blk = pool.allocate(2)
    pool.kv[0][:, :, blk[1]] = 7.0
    cache.register(list(range(6)), blk)  # the second block partly filled, registered
    assert pool.refs[blk[1]] == 1
    new = pool.copy_on_write(blk[1])
    assert new != blk[1] and torch.equal(pool.kv[0][:, :, new], pool.kv[0][:, :, blk[1]])
    assert pool.refs[blk[1]] == 0 and pool.idle == 1  # kept by the cache, unreferenced
    plain = pool.allocate(1)[0]
    assert pool.copy_on_write(plain) == plain  # not cached, not shared: written in place


def test_the_bound_on_cached_blocks_evicts_unreferenced_ones_only():
    pool, cache = _pool(max_blocks=2)
    a = pool.allocate(2)
    cache.register(list(range(8)), a)
    b = pool.allocate(2)
    cache.register(list(range(50, 58)), b)  # both of a are in use: nothing more registered
    assert cache.n_blocks == 2 and b[0] not in cache
    pool.release(a)
    cache.register(list(range(50, 58)), b)  # a's blocks evicted (leaf first) to make room
    assert cache.n_blocks == 2 and b[0] in cache and b[1] in cache and cache.evictions == 2
    assert pool.idle == 0 and sorted(pool._free[-2:]) == sorted(a)


# --- the engine --------------------------------------------------------------------------------
def test_a_repeated_prompt_takes_the_cached_blocks_without_computing_them(random_model_dir):
    p = SP(n=3, temperature=1.0, max_tokens=12, seed=3, logprobs=True)
    eng = TorchEngine(random_model_dir, kv_block=4)
    off = TorchEngine(random_model_dir, kv_block=4, prefix_cache_bytes=0)
    ids = eng.tokenize(LONG)
    first = eng.generate([Req(ids, p)])[0]
    computed = eng.stats()["prefill_tokens_computed"]
    assert computed == len(ids)
    full, _, _ = eng.prefix.match(ids[:-1])
    assert len(full) == (len(ids) - 1) // 4  # the prompt's full blocks, registered
    h = eng.submit(Req(ids, p))
    eng.step()  # admitted: its rows map the cached blocks themselves
    rows = eng._batch.rows
    assert [r.blocks[:len(full)] for r in rows] == [full] * 3
    assert all(eng.pool.refs[b] == 3 for b in full)
    while not h.done:
        eng.step()
    again = h.result
    assert again.usage.cached_tokens == len(ids) - 1  # the last token is computed for its logits
    assert eng.stats()["prefill_tokens_computed"] == computed + 1
    ref = off.generate([Req(ids, p)])[0]
    _assert_same([ref, ref], [first, again])
    assert off.stats()["prefix_cache_tokens"] == 0 and off.prefix.n_blocks == 0
    _assert_unreferenced(eng)


def test_cached_blocks_are_never_written_by_the_rows_that_hit_them(random_model_dir):
    """Prompts that share a cached prefix and then differ inside a cached block (a partial hit)
    or right after it, sampled: every registered block keeps its contents, and the original
    continuation still gives the outputs of an engine whose cache is off. Aliasing the partly
    matching block instead of copying it would let the new prompt overwrite it."""
    eng = TorchEngine(random_model_dir, kv_block=4)
    off = TorchEngine(random_model_dir, kv_block=4, prefix_cache_bytes=0)
    eng.generate([Req(OTHER, SP(n=16, max_tokens=30, seed=9))])  # the pool grows: room to spare
    eng.prefix.clear()  # its blocks are free: nothing below is evicted
    ids = eng.tokenize(LONG)
    a = eng.generate([Req(ids, SP(temperature=0, max_tokens=20))])[0].completions[0].token_ids
    assert len(a) == 20
    seq = ids + a
    before = _cached_contents(eng)
    forks = [seq[:22] + [5, 6, 7, 8, 9], seq[:24] + [9, 9, 9], seq[:len(ids) + 2] + [4, 4, 4, 4]]
    reqs = [Req(f, SP(n=2, temperature=1.0, max_tokens=10, seed=i, logprobs=True))
            for i, f in enumerate(forks)]
    got = eng.generate(reqs)
    assert all(r.usage.cached_tokens > 0 for r in got)
    after = _cached_contents(eng)
    kept = [b for b in before if b in after and after[b][0] == before[b][0]]
    assert len(kept) == len(before)  # nothing was evicted here
    for b in kept:
        assert all(torch.equal(x, y) for x, y in zip(before[b][1], after[b][1])), f"block {b} written"
    _assert_same(off.generate(reqs), got)
    cont = Req(seq[:len(ids) + 10], SP(temperature=0, max_tokens=10, logprobs=True))
    res = eng.generate([cont])[0]
    assert res.usage.cached_tokens == len(ids) + 9
    _assert_same(off.generate([cont]), [res])
    assert res.completions[0].token_ids == a[10:20]
    _assert_unreferenced(eng)


def test_a_tight_kv_memory_evicts_cached_blocks_and_outputs_stay_unbounded(random_model_dir):
    """A pool of one context and a bit: after a first workload the cached blocks fill it, so
    the next workload's blocks come from evicting them (least recently used first); outputs
    equal those of an unbounded engine (whose pool grows when no free or cached block is
    left), the pool never exceeds the bound, no block leaks."""
    ctx = 96
    free = TorchEngine(random_model_dir, max_seq_len=ctx, kv_block=4)
    bound = free.min_kv_memory + 4 * free.block_bytes
    tight = TorchEngine(random_model_dir, max_seq_len=ctx, kv_block=4, kv_memory=bound)
    waves = [[Req(LONG, SP(n=2, temperature=1.0, max_tokens=30, seed=1, logprobs=True))],
             [Req(OTHER, SP(n=3, temperature=1.0, max_tokens=30, seed=2, logprobs=True)),
              Req("Q: 3*4\n", SP(temperature=0, max_tokens=40, logprobs=True))],
             [Req(LONG, SP(n=2, temperature=0.7, max_tokens=25, seed=3, logprobs=True))]]
    for reqs in waves:
        ref, got = free.generate(reqs), tight.generate(reqs)
        _assert_same(ref, got)
        assert tight.pool.nbytes <= bound and tight.pool.n_blocks <= tight.kv_blocks
        _assert_unreferenced(tight)
        _assert_unreferenced(free)
    assert tight.prefix.evictions > 0
    assert tight.stats()["prefix_cache_blocks_idle"] > 0  # the last waves' blocks stay cached
    assert tight.peak_decode_kv_bytes <= bound < free.peak_decode_kv_bytes


def test_references_come_back_after_every_request(random_model_dir):
    """Requests alone, together, repeated, cancelled and speculative: after each, no block is
    referenced; the cached ones are idle in the pool, counted free."""
    eng = TorchEngine(random_model_dir, kv_block=4, speculative={"draft": "ngram", "k": 3})
    ids = eng.tokenize(LONG)
    for reqs in ([Req(ids, SP(n=4, temperature=1.0, max_tokens=15, seed=0))],
                 [Req(ids, SP(n=2, temperature=0, max_tokens=15)), Req(OTHER, SP(max_tokens=8, seed=1))],
                 [Req(ids[:-3], SP(max_tokens=1, seed=2)), Req(ids + [3, 3], SP(n=3, max_tokens=9, seed=3))]):
        assert all(r.error is None for r in eng.generate(reqs))
        _assert_unreferenced(eng)
    h = eng.submit(Req(ids, SP(n=2, max_tokens=50, seed=4)))
    eng.step()
    h.cancel()
    while eng.step():
        pass
    _assert_unreferenced(eng)
    stats = eng.stats()
    assert stats["prefix_cache_blocks"] == stats["prefix_cache_blocks_idle"] > 0
    assert stats["prefix_cache_bytes"] == stats["prefix_cache_blocks"] * eng.block_bytes
    eng.prefix.clear()
    assert eng.pool.idle == 0 and len(eng.pool._free) == eng.pool.n_blocks
