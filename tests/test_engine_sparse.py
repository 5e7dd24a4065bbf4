"""Block-sparse decode attention (engine/sparse.py): the option, Quest's bound and selection
against brute force, the gathered attention against dense, the block summaries kept in step
with the engine's rows, and the engine equal to dense where the budget covers every block."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ttscale.engine import TorchEngine
from ttscale.engine.paged import SCRATCH, BlockPool, PagedKV, Plane
from ttscale.engine.sparse import (BlockSummaries, SparseAttention, SparseCounters, gather_attend,
                                   parse_sparse, plan_step, quest_bound, read_positions,
                                   select_blocks, summary_bytes)
from ttscale.errors import TTScaleError
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

SHORT = ["Q: 12+7*3\n", "Q: 8-2+9+6\n=6+9+6\n", "x"]
LONG = "Q: " + "+".join(str(i % 97) for i in range(40)) + "\n"  # about 130 tokens


# --- the option ------------------------------------------------------------------------------
def test_option_parses_strings_dicts_and_dataclasses():
    want = SparseAttention(block=16, sink=1, window=4, topk=4)
    assert parse_sparse("sink=1, window=4,topk=4,block=16") == want
    assert parse_sparse({"block": 16, "sink": 1, "window": 4, "topk": 4}) == want
    assert parse_sparse(want) is want and str(want) == "block=16,sink=1,window=4,topk=4"
    assert parse_sparse("topk=2") == SparseAttention(topk=2)  # the others keep their defaults
    assert parse_sparse(None) is None and parse_sparse("off") is None
    assert want.budget == 9
    quant = parse_sparse("block=8,topk=2,bits=4")
    assert quant.bits == 4 and str(quant) == "block=8,sink=1,window=4,topk=2,bits=4"
    assert parse_sparse(str(quant)) == quant


@pytest.mark.parametrize("value, named", [
    ("block=0", "block=0"), ("window=0", "window=0"), ("topk=-1", "topk=-1"), ("sink=-2", "sink=-2"),
    ("block=x", "block='x'"), ("blocks=16", "'blocks'"), ("block16", "'block16'"),
    ({"topk": 2.5}, "topk=2.5"), ({"topk": True}, "topk=True"), (16, "16"),
    (SparseAttention(block=0), "block=0"), ("bits=1", "bits=1"), ("bits=9", "bits=9"),
])
def test_bad_option_values_are_one_line_errors_naming_them(value, named):
    with pytest.raises(TTScaleError) as e:
        parse_sparse(value)
    msg = str(e.value)
    assert "\n" not in msg and named in msg and "accepted" in msg


def test_engine_refuses_bad_settings_and_combinations(random_model_dir):
    with pytest.raises(TTScaleError, match="sparse_attention topk=-1 is out of range"):
        TorchEngine(random_model_dir, sparse_attention="topk=-1")
    with pytest.raises(TTScaleError, match="sparse_attention and speculative cannot be combined"):
        TorchEngine(random_model_dir, sparse_attention="topk=2", speculative={"draft": "ngram"})


def test_engine_refuses_a_sliding_window_model(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from ttscale.models.family import VOCAB_SIZE

    cfg = MistralConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        max_position_embeddings=128, sliding_window=12)
    path = _save(MistralForCausalLM(cfg), tmp_path)
    with pytest.raises(TTScaleError, match="sliding window \\(12\\) is not supported"):
        TorchEngine(path, sparse_attention="topk=2")


# --- the pieces against brute force -----------------------------------------------------------
def _paged(layers: int, b: int, g: int, length: int, d: int, block: int, gen) -> PagedKV:
    """A random paged cache of b rows of `length` positions whose blocks lie shuffled in the pool."""
    nb = -(-length // block)
    pool = BlockPool([Plane(layers, g, d, torch.float32)], block, "cpu")
    ids = pool.allocate(b * nb)
    perm = torch.randperm(len(ids), generator=gen).tolist()
    tables = torch.tensor([[ids[perm[r * nb + j]] for j in range(nb)] + [SCRATCH] for r in range(b)])
    pool.kv[0].normal_(generator=gen)
    return PagedKV(pool, tables, scratch=length)


def _blocks(cache: PagedKV) -> list[list[int]]:
    return [row[:-1] for row in cache.tables.tolist()]


def _brute_summaries(keys: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keys [G, T, D] -> kmin, kmax [G, T // block, D] by a loop over blocks."""
    nb = keys.shape[1] // block
    lo = torch.stack([keys[:, j * block:(j + 1) * block].min(1).values for j in range(nb)], 1)
    hi = torch.stack([keys[:, j * block:(j + 1) * block].max(1).values for j in range(nb)], 1)
    return lo, hi


def _brute_selection(q: torch.Tensor, keys: torch.Tensor, n: int, cfg: SparseAttention) -> set[int]:
    """Blocks one row and KV head attends to: q [H_g, D] (the group's heads), keys [T, D]."""
    nb = math.ceil(n / cfg.block)
    if nb <= cfg.budget:
        return set(range(nb))
    fixed = set(range(cfg.sink)) | set(range(nb - cfg.window, nb))
    bounds = {}
    for j in range(cfg.sink, nb - cfg.window):
        blk = keys[j * cfg.block:(j + 1) * cfg.block]
        lo, hi = blk.min(0).values, blk.max(0).values
        bounds[j] = max(sum(max(float(qh[d] * lo[d]), float(qh[d] * hi[d])) for d in range(len(qh)))
                        for qh in q)
    top = sorted(bounds, key=lambda j: -bounds[j])[:cfg.topk]
    return fixed | set(top)


@pytest.mark.parametrize("seed, h, g", [(0, 4, 4), (1, 4, 2), (2, 6, 1)])
def test_selection_is_sinks_window_and_the_largest_bounds(seed, h, g):
    """Summaries kept by BlockSummaries over a real paged pool, Quest's bound and select_blocks pick
    exactly the brute-force blocks, for rows of several lengths (short ones: every block)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = SparseAttention(block=4, sink=1, window=2, topk=3)
    b, d, length, layers = 5, 8, 64, 2
    cache = _paged(layers, b, g, length, d, cfg.block, gen)
    lengths = [64, 50, 37, 24, 9]  # the last two have no more than sink + window + topk blocks
    summ = BlockSummaries(cache.pool)
    tables = _blocks(cache)
    summ.update(tables, [m - 1 for m in lengths])
    for layer in range(layers):
        keys = cache.read(layer, 0, b, length)[0]
        for r, m in enumerate(lengths):
            lo, hi = _brute_summaries(keys[r, :, :m - 1], cfg.block)
            k = lo.shape[1]
            assert [summ.done[i] for i in tables[r]] == [True] * k + [False] * (len(tables[r]) - k)
            ids = tables[r][:k]
            assert torch.equal(summ.kmin[layer, ids].transpose(0, 1), lo)
            assert torch.equal(summ.kmax[layer, ids].transpose(0, 1), hi)
    q = torch.randn(b, h, 1, d, generator=gen)
    step = plan_step(cfg, summ, lengths, SparseCounters(), tables, cache.tables)
    for layer in range(layers):
        nc = step.n_cand
        keys = cache.read(layer, 0, b, length)[0]
        idx = cache.tables[:, :nc]
        scores = quest_bound(q[:, :, 0], summ.kmin[layer][idx].transpose(1, 2),
                             summ.kmax[layer][idx].transpose(1, 2))
        blocks, valid = select_blocks(scores, step.n_blocks, cfg)
        assert blocks.shape == (b, g, cfg.budget)
        for r, m in enumerate(lengths):
            for kv in range(g):
                got = blocks[r, kv][valid[r, kv]].tolist()
                assert len(got) == len(set(got)), "a block was selected twice"
                qg = q[r, kv * (h // g):(kv + 1) * (h // g), 0]
                assert set(got) == _brute_selection(qg, keys[r, kv], m, cfg)


def test_sparse_step_attends_to_exactly_the_selected_positions():
    """SparseStep.attend equals softmax attention over the brute-force selection's positions."""
    gen = torch.Generator().manual_seed(5)
    cfg = SparseAttention(block=4, sink=1, window=1, topk=2)
    b, h, g, d, length = 3, 4, 2, 8, 48
    cache = _paged(1, b, g, length, d, cfg.block, gen)
    lengths = [48, 33, 13]
    summ = BlockSummaries(cache.pool)
    step = plan_step(cfg, summ, lengths, SparseCounters(), _blocks(cache), cache.tables)
    q = torch.randn(b, h, 1, d, generator=gen)
    k, v = cache.read(0, 0, b, length)
    y = step.attend(0, q, cache)
    for r, m in enumerate(lengths):
        for head in range(h):
            kv = head // (h // g)
            qg = q[r, kv * (h // g):(kv + 1) * (h // g), 0]
            blocks = _brute_selection(qg, k[r, kv], m, cfg)
            pos = [p for j in sorted(blocks) for p in range(j * cfg.block, (j + 1) * cfg.block) if p < m]
            att = torch.softmax(k[r, kv, pos] @ q[r, head, 0] / math.sqrt(d), 0)
            assert torch.allclose(y[r, head, 0], att @ v[r, kv, pos], atol=1e-5)
        assert read_positions([m], cfg)[0] == len(pos)


def _brute_estimate_attention(q, k, v, m: int, cfg: SparseAttention, r: int, head: int, g: int):
    """One row and query head under `bits`: exact attention to the sink and window blocks and
    the topk * block candidates of largest estimated score (largest over the group's heads), the
    other candidates as one position (log-sum-exp of their estimates, mean of their values)."""
    h, d = q.shape[1], q.shape[-1]
    kv, hg = head // (h // g), h // g
    levels = 2 ** (cfg.bits - 1) - 1
    keys = k[r, kv, :m]
    approx = torch.stack([torch.round(key / (key.abs().max() / levels)).clamp(-levels, levels)
                          * (key.abs().max() / levels) for key in keys])
    nb = math.ceil(m / cfg.block)
    fixed = [p for p in range(m) if p // cfg.block < cfg.sink or p // cfg.block >= nb - cfg.window]
    cands = [p for p in range(m) if p not in fixed]
    group = q[r, kv * hg:(kv + 1) * hg, 0]
    est = {p: max(float(qh @ approx[p]) for qh in group) / math.sqrt(d) for p in cands}
    top = sorted(cands, key=lambda p: -est[p])[:cfg.topk * cfg.block]
    left = [p for p in cands if p not in top]
    chosen = fixed + top
    logits = [float(q[r, head, 0] @ keys[p]) / math.sqrt(d) for p in chosen]
    values = [v[r, kv, p] for p in chosen]
    if left:
        logits.append(float(torch.logsumexp(torch.tensor(
            [float(q[r, head, 0] @ approx[p]) / math.sqrt(d) for p in left]), 0)))
        values.append(torch.stack([v[r, kv, p] for p in left]).mean(0))
    return torch.softmax(torch.tensor(logits), 0) @ torch.stack(values), len(chosen)


@pytest.mark.parametrize("bits, h, g", [(4, 4, 2), (8, 4, 4), (3, 6, 1)])
def test_a_bits_step_attends_exactly_to_its_choice_and_to_the_rest_as_one(bits, h, g):
    gen = torch.Generator().manual_seed(bits)
    cfg = SparseAttention(block=4, sink=1, window=1, topk=2, bits=bits)
    b, d, length = 3, 8, 48
    cache = _paged(1, b, g, length, d, cfg.block, gen)
    cache.pool.kv[0][:, 1].normal_(generator=gen)  # values differ from keys
    lengths = [48, 33, 13]
    summ = BlockSummaries(cache.pool, bits)
    counters = SparseCounters()
    step = plan_step(cfg, summ, lengths, counters, _blocks(cache), cache.tables)
    q = torch.randn(b, h, 1, d, generator=gen)
    k, v = cache.read(0, 0, b, length)
    y = step.attend(0, q, cache)
    for r, m in enumerate(lengths):
        for head in range(h):
            want, n_chosen = _brute_estimate_attention(q, k, v, m, cfg, r, head, g)
            assert torch.allclose(y[r, head, 0], want, atol=1e-5)
        assert read_positions([m], cfg)[0] == n_chosen
    # the copy of every candidate key is read: bits of 64 (a float32 position) plus a scale
    cands = [(-(-m // 4) - 2) * 4 if -(-m // 4) > cfg.budget else 0 for m in lengths]
    want = sum((read_positions([m], cfg)[0] + c * (bits / 64 + 4 / (2 * d * 4))) / m
               for m, c in zip(lengths, cands)) / b
    assert counters.as_dict()["kv_read_fraction"] == pytest.approx(want)


def test_bits_summaries_are_the_quantised_keys_and_the_value_sums():
    gen = torch.Generator().manual_seed(3)
    cache = _paged(2, 2, 2, 24, 8, 4, gen)
    cache.pool.kv[0][:, 1].normal_(generator=gen)
    summ = BlockSummaries(cache.pool, 4)
    summ.update(_blocks(cache), [24, 17])
    for r, complete in ((0, 6), (1, 4)):
        ids = _blocks(cache)[r][:complete]
        for layer in range(2):
            keys, values = cache.read(layer, r, 1, complete * 4)
            got = (summ.codes[layer, ids].float() * summ.kscale[layer, ids][..., None])
            got = got.transpose(0, 1).reshape(2, -1, 8)
            err = (got - keys[0]).abs().amax(-1)
            assert (err <= keys[0].abs().amax(-1) / 7 / 2 + 1e-6).all()  # half a step at most
            sums = values[0].view(2, complete, 4, 8).sum(2)
            assert torch.allclose(summ.vsum[layer, ids].transpose(0, 1), sums, atol=1e-5)
    assert summ.nbytes == summary_bytes(SparseAttention(block=4, bits=4), Plane(2, 2, 8, torch.float32)) * \
        (cache.pool.n_blocks + 1)


@pytest.mark.parametrize("h, g", [(4, 4), (4, 2)])
def test_gathering_every_block_equals_dense_attention(h, g):
    gen = torch.Generator().manual_seed(7)
    b, d, t, block = 3, 16, 41, 4
    q = torch.randn(b, h, 1, d, generator=gen)
    k, v = torch.randn(b, g, t, d, generator=gen), torch.randn(b, g, t, d, generator=gen)
    n = torch.tensor([40, 23, 5])
    nb = -(-t // block)
    blocks = torch.arange(nb).expand(b, g, nb)
    valid = blocks < (-(-n // block))[:, None, None]
    # the rows' blocks, shuffled in a pool of [N, G, block, D]
    pad = lambda x: torch.cat([x, torch.zeros(b, g, nb * block - t, d)], 2)  # noqa: E731
    perm = torch.randperm(b * nb, generator=gen)
    tables = perm.view(b, nb)
    pools = []
    for x in (k, v):
        blocked = pad(x).view(b, g, nb, block, d).permute(0, 2, 1, 3, 4).reshape(b * nb, g, block, d)
        pool = torch.empty_like(blocked)
        pool[perm] = blocked
        pools.append(pool)
    y = gather_attend(q, pools[0], pools[1], tables, blocks.clone(), valid, n, block)
    mask = (torch.arange(t)[None, :] < n[:, None])[:, None, None]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=g != h)
    assert torch.allclose(y, ref, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), block=st.integers(1, 9), d=st.integers(1, 12),
       scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_quest_bound_is_at_least_every_key_score_of_its_block(seed, block, d, scale):
    gen = torch.Generator().manual_seed(seed)
    g, heads, nb = 2, 4, 5
    keys = torch.randn(1, g, nb * block, d, generator=gen) * scale
    keys[0, 0, :block] = keys[0, 0, 0].clone()  # a block of equal keys: the bound is exact there
    q = torch.randn(1, heads, d, generator=gen) * scale
    lo, hi = _brute_summaries(keys[0], block)
    u = quest_bound(q, lo[None], hi[None])[0]  # [G, NB]
    per = heads // g
    for kv in range(g):
        scores = q[0, kv * per:(kv + 1) * per] @ keys[0, kv].T  # [heads of the group, T]
        true_max = scores.view(per, nb, block).amax(-1).amax(0)  # [NB]
        tol = 1e-5 * (1 + true_max.abs())
        assert (u[kv] >= true_max - tol).all()
        if kv == 0:  # block 0 of KV head 0 has equal keys: the bound is that key's score
            assert abs(float(u[0, 0] - true_max[0])) <= 10 * float(tol[0])


def test_read_positions_counts_what_the_gather_reads():
    cfg = SparseAttention(block=4, sink=2, window=2, topk=3)
    for m in range(1, 90):
        nb = -(-m // cfg.block)
        blocks = set(range(cfg.sink)) | set(range(nb - cfg.window, nb)) | set(range(cfg.sink, cfg.sink + cfg.topk))
        want = m if nb <= cfg.budget else sum(1 for j in blocks for p in range(j * 4, j * 4 + 4) if p < m)
        assert read_positions([m], cfg) == [want]


# --- the engine ----------------------------------------------------------------------------
def _save(model, out: Path) -> str:
    """`model` in Hugging Face format with the family's tokenizer (the project's own saver)."""
    from ttscale.train.sft import save_model

    save_model(model, out)
    return str(out)


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory):
    """A random Qwen2 with 2 query heads per KV head (selection shared by a group)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ttscale.models.family import VOCAB_SIZE

    torch.manual_seed(11)
    cfg = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return _save(Qwen2ForCausalLM(cfg), tmp_path_factory.mktemp("gqa"))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """A random Gemma 3 text model: local (window 8) and global layers, 1 KV head."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from ttscale.models.family import VOCAB_SIZE

    torch.manual_seed(3)
    cfg = Gemma3TextConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=48, query_pre_attn_scalar=40,
                           layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                           max_position_embeddings=512, initializer_range=0.1, bos_token_id=1,
                           eos_token_id=2, pad_token_id=0)
    return _save(Gemma3ForCausalLM(cfg), tmp_path_factory.mktemp("gemma3"))


def _greedy(engine, prompts, max_tokens=24):
    reqs = [Req(p, SP(temperature=0, max_tokens=max_tokens, logprobs=True)) for p in prompts]
    res = engine.generate(reqs)
    assert not [r.error for r in res if r.error]
    return [r.completions[0] for r in res]


def _assert_same(got, ref):
    for a, b in zip(got, ref):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


@pytest.mark.parametrize("model, bits", [("random_model_dir", ""), ("gqa_dir", ""),
                                         ("gemma_dir", ""), ("gqa_dir", ",bits=4")])
def test_a_budget_covering_every_block_is_dense(model, bits, request):
    path = request.getfixturevalue(model)
    dense = _greedy(TorchEngine(path), SHORT + [LONG], max_tokens=40)
    eng = TorchEngine(path, sparse_attention="block=8,sink=1,window=1,topk=30" + bits)  # 256 positions
    _assert_same(_greedy(eng, SHORT + [LONG], max_tokens=40), dense)
    s = eng.stats()
    assert s["sparse_sparse_steps"] == 0 and s["sparse_kv_read_fraction"] == 1.0


@pytest.mark.parametrize("model", ["random_model_dir", "gqa_dir", "gemma_dir"])
def test_gathered_rows_under_budget_equal_dense(model, request):
    """One long row makes the steps sparse; the short rows beside it take the gather path with
    every block selected and must decode as dense does (token for token, logprobs 1e-4)."""
    path = request.getfixturevalue(model)
    dense = _greedy(TorchEngine(path), SHORT, max_tokens=20)
    eng = TorchEngine(path, sparse_attention="block=4,sink=1,window=2,topk=8")  # 44 positions
    got = _greedy(eng, SHORT + [LONG], max_tokens=20)
    _assert_same(got[:len(SHORT)], dense)
    s = eng.stats()
    assert s["sparse_sparse_steps"] > 0 and 0 < s["sparse_kv_read_fraction"] < 1
    assert s["sparse_kv_read_fraction"] <= s["sparse_kv_read_fraction_with_summaries"]


def test_summaries_follow_rows_as_they_join_move_and_leave(gqa_dir):
    """Requests of different lengths finish at different steps (block tables move into the
    holes) and new ones are admitted while others run: after every step the summaries of each
    live row's complete blocks equal those computed from its keys."""
    cfg = SparseAttention(block=4, sink=1, window=1, topk=2)
    eng = TorchEngine(gqa_dir, sparse_attention=cfg, max_batch_size=4)
    prompts = [LONG, LONG[:60] + "\n", "Q: 1+2\n", LONG[:90] + "\n", LONG, "Q: 5*5-3\n"]
    handles = [eng.submit(Req(p, SP(temperature=1.0, seed=i, max_tokens=8 + 9 * i)))
               for i, p in enumerate(prompts[:4])]
    steps = 0
    while eng.has_work():
        eng.step()
        steps += 1
        if steps == 5:
            handles += [eng.submit(Req(p, SP(temperature=0, max_tokens=30))) for p in prompts[4:]]
        summ = eng._summ
        if summ is None:
            continue
        assert summ.pool is eng.pool
        for r, row in enumerate(eng._batch.rows):
            done = [summ.done[i] for i in row.blocks]
            k = done.index(False) if False in done else len(done)
            assert not any(done[k:]) and k <= (row.length - 1) // cfg.block
            for layer in range(eng.cfg.n_layer):
                keys = eng.cache.read(layer, r, 1, max(1, k * cfg.block))[0][0]
                if k:
                    lo, hi = _brute_summaries(keys, cfg.block)
                    assert torch.equal(summ.kmin[layer, row.blocks[:k]].transpose(0, 1), lo)
                    assert torch.equal(summ.kmax[layer, row.blocks[:k]].transpose(0, 1), hi)
    assert all(h.done and not h.result.error for h in handles)
    assert eng.stats()["sparse_sparse_steps"] > 0


def test_kv_memory_counts_the_summaries(random_model_dir):
    dense = TorchEngine(random_model_dir)
    eng = TorchEngine(random_model_dir, sparse_attention="block=16")
    assert eng.kv_token_bytes == dense.kv_token_bytes * 17 // 16
    quant = TorchEngine(random_model_dir, sparse_attention="block=16,bits=4")
    plane = Plane(quant.cfg.n_layer, quant.cfg.n_kv_head, quant.cfg.head_dim, torch.float32)
    assert quant.block_bytes - 16 * dense.kv_token_bytes == summary_bytes(quant.sparse, plane) > 0
    bound = (eng.context_length + 1) * eng.kv_token_bytes * 2
    eng = TorchEngine(random_model_dir, sparse_attention="block=16,topk=1,window=1", kv_memory=bound)
    _greedy(eng, [LONG] * 3, max_tokens=40)
    assert 0 < eng.peak_decode_kv_bytes <= bound


def test_bench_sparse_reports_the_contract_keys(random_model_dir, tmp_path):
    from ttscale.bench.engine import append_to_doc, bench_sparse, table

    r = bench_sparse(random_model_dir, problems=2, settings=["block=16,sink=1,window=2,topk=2"],
                     n=2, max_tokens=6, long_tokens=200)
    c = "block=16,sink=1,window=2,topk=2"
    assert r["workload"] == "sparse" and r["settings"] == [c]
    assert 0 <= r["accuracy_dense"] <= 1 and 0 <= r["accuracy_sparse"][c] <= 1
    assert 0 < r["kv_read_fraction"][c] < 1 and 0 < r["long_kv_read_fraction"][c] < 1
    assert r["dense_tok_s"] > 0 and r["sparse_tok_s"][c] > 0 and r["long_sparse_tok_s"][c] > 0
    assert isinstance(r["target_met"], bool)
    assert "kv read" in table(r)
    assert "workload sparse" in append_to_doc(r, "test", tmp_path / "b.md").read_text()
    with pytest.raises(TTScaleError, match="sparse_attention topk=-2"):
        bench_sparse(random_model_dir, problems=1, settings=["topk=-2"])
    with pytest.raises(TTScaleError, match="task='gsm8k' has no long mode; accepted: arith, countdown"):
        bench_sparse(random_model_dir, problems=1, settings=[c], task="gsm8k")


def test_bench_sparse_draws_the_chains_of_the_task_and_seed_asked(random_model_dir):
    from ttscale.bench.engine import bench_sparse, table

    r = bench_sparse(random_model_dir, problems=1, settings=["block=16,sink=1,window=2,topk=2"],
                     n=1, max_tokens=4, long_tokens=100, task="countdown", level=2, seed=3)
    assert (r["task"], r["level"], r["seed"]) == ("countdown", 2, 3)
    assert "1 countdown level-2 problems" in table(r)


def test_bench_cli_names_a_bad_setting(random_model_dir):
    from typer.testing import CliRunner

    from ttscale.cli import engine_cmd  # noqa: F401 - registers the command
    from ttscale.cli.app import app

    for args, named in ((["--sparse", "block=16;topk=x"], "topk='x'"), (["--level", "7"], "--level 7"),
                        (["--problems", "0"], "--problems 0")):
        res = CliRunner().invoke(app, ["bench", "engine", "--workload", "sparse", "--model",
                                       random_model_dir, "--no-doc", *args])
        assert res.exit_code != 0 and named in str(res.exception)


@pytest.mark.parametrize("args, named", [
    (["eval", "--model", "ttscale-tiny", "--sparse-attention", "block=8,topk=x"], "topk='x'"),
    (["solve", "--model", "ttscale-tiny", "--sparse-attention", "width=3"], "option 'width'"),
    (["sweep", "--model", "ttscale-tiny", "--sparse-attention", "block=0"], "block=0"),
    (["solve", "--model", "ttscale-tiny", "--backend", "openai", "--base-url", "http://127.0.0.1:9",
      "--sparse-attention", "block=8"], "--sparse-attention applies only to --backend torch")])
def test_bad_sparse_attention_flag_is_one_line_exit_2(args, named, monkeypatch, capsys, tmp_path):
    from cli_helpers import run_cli

    code, _, err = run_cli(monkeypatch, capsys, *args, *(["--out", str(tmp_path / "s")]
                                                       if args[0] == "sweep" else []))
    assert code == 2 and "\n" not in err and named in err, err


def test_sparse_attention_flag_reaches_the_engine():
    from ttscale.cli.options import generator_options
    from ttscale.engine import load_generator

    opts = generator_options("torch", [], None, None, None, None, sparse_attention="block=8,topk=2")
    assert opts == {"sparse_attention": "block=8,sink=1,window=4,topk=2"}
    assert generator_options("torch", [], None, None, None, None, sparse_attention="off") == {}
    gen = load_generator("ttscale-tiny", **opts)
    assert gen.sparse == SparseAttention(block=8, sink=1, window=4, topk=2)
