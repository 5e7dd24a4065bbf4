"""Block-sparse decode attention (Quest, Tang et al. 2024) for the torch engine.

The KV positions of a row are cut into blocks of `block` positions. In a decode step (one new
token per row) each query attends only to the first `sink` blocks (attention sinks), the last
`window` blocks (the newest one, holding the query's own token, among them) and the `topk` other
blocks chosen per row and KV head by Quest's upper bound on q.k: with kmin, kmax the per-channel
minimum and maximum of a block's keys, bound = sum over channels of max(q*kmin, q*kmax), which
is >= q.k for every key of the block. Under grouped-query attention the query heads of a group
share one selection (so each KV head's keys are gathered once): a block's score is the largest
bound over the group's heads. A row with no more blocks than sink + window + topk attends to
every position (exactly dense); when every row of a step is that short the step runs the dense
path itself. Prefill (and anything but one token per row) stays dense.

Block summaries are kept incrementally (`BlockSummaries`): kmin / kmax of a block are computed
once, from the paged pool (whose block is the sparse block), the first sparse step after the
block is complete, and kept beside the pool by block id (a prompt block the n samples share is
summarised once; a block handed out afresh is forgotten). Computing them every step would read
every key every step, the very traffic the selection is meant to avoid; kept, they add one read
of each key over a block's life and, per step, one min/max pair per candidate block (1/block of
the keys). The memory: 1/block of the KV pool.

The selected blocks are gathered (index_select on the pool, through the rows' block tables) and dense SDPA runs over the
gathered positions only, so a sparse step reads fewer positions (`SparseCounters`), not a mask
over all of them. On a CPU with models this small the gather and the selection cost about what
they save; `ttscale bench engine --workload sparse` measures it.

With `bits` (2-8) the choice is of single positions, and nothing is dropped: the candidate
blocks' keys are kept as a `bits`-bit copy (signed codes and a scale per key and head, made once
per complete block like the bounds); each step estimates every candidate's score from the copy,
attends exactly to the `topk * block` candidates of largest estimate (largest over the group's
query heads) with the sink and window blocks, and attends to the candidates left out as one
more position: its logit the log-sum-exp of their estimated scores, its value their mean (a
kept per-block sum of values, minus the chosen ones). Exact top-k alone drops the left-out
softmax mass, which the digit-level chains of the long mode cannot spare
(`benchmarks/sparse_oracle.py`: an exact top-k at 15% of the KV loses 16 points on arith
level 5, the same with the mass put back loses 2). Read per step: the chosen positions, plus the
copy of every candidate key (bits / (2 x the pool's bits) of a position, and its scale) in
`kv_read_fraction`; the value sums as summaries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ttscale.errors import TTScaleError

if TYPE_CHECKING:
    from ttscale.engine.paged import Plane

FIELDS = ("block", "sink", "window", "topk", "bits")
ACCEPTED = ('"block=16,sink=1,window=4,topk=4" (or a dict / SparseAttention with those keys: '
            "block >= 1 positions, sink >= 0, window >= 1, topk >= 0 blocks; optional bits: 0, "
            "or 2-8 to choose single positions from a bits-bit copy of the keys)")


@dataclass(frozen=True)
class SparseAttention:
    """block: positions per block; sink, window, topk: blocks; bits: 0 (Quest's whole blocks)
    or the key copy's bits that choose topk * block single positions (see the module doc)."""

    block: int = 16
    sink: int = 1
    window: int = 4
    topk: int = 4
    bits: int = 0

    @property
    def budget(self) -> int:
        """Most blocks a query attends to."""
        return self.sink + self.window + self.topk

    def __str__(self) -> str:
        bits = f",bits={self.bits}" if self.bits else ""
        return f"block={self.block},sink={self.sink},window={self.window},topk={self.topk}{bits}"


def parse_sparse(value: str | dict | SparseAttention | None) -> SparseAttention | None:
    """The engine option `sparse_attention` checked; None (or "" / "off") switches it off."""
    if value is None or isinstance(value, SparseAttention) and _check(value):
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("", "off", "none", "dense"):
            return None
        items = {}
        for part in value.split(","):
            key, eq, raw = part.partition("=")
            key = key.strip()
            if not eq or not key:
                raise TTScaleError(f"sparse_attention {value!r}: {part.strip()!r} is not key=value; "
                                   f"accepted: {ACCEPTED}")
            try:
                items[key] = int(raw.strip())
            except ValueError:
                raise TTScaleError(f"sparse_attention {key}={raw.strip()!r} is not an integer; "
                                   f"accepted: {ACCEPTED}") from None
        value = items
    if not isinstance(value, dict):
        raise TTScaleError(f"sparse_attention={value!r} is not a setting; accepted: {ACCEPTED}")
    bad = [k for k in value if k not in FIELDS]
    if bad:
        raise TTScaleError(f"unknown sparse_attention option {bad[0]!r}; accepted: {', '.join(FIELDS)}")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise TTScaleError(f"sparse_attention {k}={v!r} is not an integer; accepted: {ACCEPTED}")
    cfg = SparseAttention(**value)
    _check(cfg)
    return cfg


def _check(cfg: SparseAttention) -> bool:
    lows = {"block": 1, "sink": 0, "window": 1, "topk": 0, "bits": 0}
    for k, low in lows.items():
        v = getattr(cfg, k)
        bad = isinstance(v, bool) or not isinstance(v, int) or v < low
        if bad or k == "bits" and v not in (0, 2, 3, 4, 5, 6, 7, 8):
            raise TTScaleError(f"sparse_attention {k}={v!r} is out of range; accepted: {ACCEPTED}")
    return True


# --- the pieces, as pure functions (tested against brute force) --------------------------------
def quest_bound(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """[B, G, NB]: per row, KV head and block, the largest over the group's query heads of
    sum_d max(q_d * kmin_d, q_d * kmax_d) (an upper bound on q.k for every key of the block).

    q: [B, H, D] (H a multiple of G); kmin, kmax: [B, G, NB, D].
    """
    b, h, d = q.shape
    g = kmin.shape[1]
    qg = q.view(b, g, h // g, d)
    # max(q*lo, q*hi) is q*hi where q >= 0 and q*lo where q < 0: two matmuls
    u = qg.clamp(min=0) @ kmax.transpose(-1, -2) + qg.clamp(max=0) @ kmin.transpose(-1, -2)
    return u.amax(2)


def select_blocks(scores: torch.Tensor, n_blocks: torch.Tensor, cfg: SparseAttention
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks each row and KV head attends to: (blocks, valid), both [B, G, budget].

    scores: [B, G, NBc] bounds of blocks 0..NBc-1 (only candidates are read: neither sink nor
    window blocks, and below n_blocks - window); n_blocks: [B] blocks of each row (the last may
    be partial). Sink blocks, window blocks and the `topk` candidates of largest bound; invalid
    entries (a row with fewer blocks) carry block 0 and valid False. No block appears twice.
    """
    b, g, nbc = scores.shape
    dev = scores.device
    nb = n_blocks[:, None]
    sinks = torch.arange(cfg.sink, device=dev).expand(b, -1)
    wins = nb - cfg.window + torch.arange(cfg.window, device=dev)
    parts = [(sinks, sinks < nb), (wins, wins >= max(cfg.sink, 0))]
    parts = [(x[:, None].expand(b, g, -1), ok[:, None].expand(b, g, -1)) for x, ok in parts]
    k = min(cfg.topk, nbc)
    if k:
        j = torch.arange(nbc, device=dev)
        cand = ((j >= cfg.sink) & (j < nb - cfg.window))[:, None].expand(b, g, -1)
        top = scores.masked_fill(~cand, float("-inf")).topk(k, dim=-1).indices
        parts.insert(1, (top, cand.gather(2, top)))
    if cfg.topk > k:  # fewer candidates than topk in every row: pad
        pad = torch.zeros(b, g, cfg.topk - k, dtype=torch.long, device=dev)
        parts.insert(1, (pad, pad.bool()))
    blocks = torch.cat([x for x, _ in parts], -1)
    valid = torch.cat([ok for _, ok in parts], -1)
    return blocks.clamp(min=0).masked_fill(~valid, 0), valid


def gather_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor,
                  blocks: torch.Tensor, valid: torch.Tensor, n: torch.Tensor, block: int,
                  scale: float | None = None) -> torch.Tensor:
    """Attention of q ([B, H, 1, D]) over the positions of the selected blocks only.

    k, v: [N, G, block, D] (one layer of the paged pool); tables: [B, >= blocks] the rows' block
    ids; blocks, valid: [B, G, S] from `select_blocks` (blocks of the row's sequence); n: [B]
    positions of each row (0..n-1 exist). Returns [B, H, 1, D].
    """
    b, g, s = blocks.shape
    d = k.shape[-1]
    h = q.shape[1]
    dev = k.device
    offs = torch.arange(block, device=dev)
    ids = tables.gather(1, blocks.flatten(1)).view(b, g, s)
    ok = (valid[..., None] & (blocks[..., None] * block + offs < n[:, None, None, None])).flatten(2)
    rows = (ids * g + torch.arange(g, device=dev)[None, :, None]) * block  # first row of each block
    flat = (rows[..., None] + offs).flatten()
    ks = k.reshape(-1, d).index_select(0, flat).view(b, g, -1, d)
    vs = v.reshape(-1, d).index_select(0, flat).view(b, g, -1, d)
    mask = ok.repeat_interleave(h // g, 1)[:, :, None]
    return F.scaled_dot_product_attention(q, ks, vs, attn_mask=mask, scale=scale, enable_gqa=g != h)


def estimate_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor,
                    n: torch.Tensor, n_blocks: torch.Tensor, cfg: SparseAttention, n_cand: int,
                    codes: torch.Tensor, kscale: torch.Tensor, vsum: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
    """Attention of q ([B, H, 1, D]) with single positions chosen from a low-bit copy of the keys
    (`bits` in the module doc): exact over the sink and window blocks and the `topk * block`
    candidates of largest estimated score, the other candidates as one position (log-sum-exp of
    their estimates, mean of their values).

    k, v: [N, G, block, D] (one layer of the pool); codes, kscale, vsum: that layer's summaries
    by block id; tables [B, >= n_cand]; n, n_blocks: [B]; candidates lie in blocks
    0..n_cand-1. Returns [B, H, 1, D].
    """
    b, h, _, d = q.shape
    g, blk = k.shape[1], cfg.block
    hg, dev = h // g, q.device
    sc = scale if scale is not None else d ** -0.5
    ids = tables[:, :n_cand]
    keys = (codes[ids].float() * kscale[ids][..., None]).permute(0, 2, 1, 3, 4)
    qg = q[:, :, 0].float().view(b, g, hg, d)
    est = qg @ keys.reshape(b, g, n_cand * blk, d).transpose(-1, -2) * sc  # [B, G, hg, P]
    jb = torch.arange(n_cand, device=dev)
    cand_b = (jb >= cfg.sink)[None] & (jb[None] < (n_blocks - cfg.window)[:, None])  # [B, nc]
    cand = cand_b.repeat_interleave(blk, 1)  # [B, P]
    est = est.masked_fill(~cand[:, None, None], float("-inf"))
    top = est.amax(2).topk(min(cfg.topk * blk, n_cand * blk), -1).indices  # [B, G, K]
    top_ok = cand[:, None].expand(b, g, -1).gather(2, top)
    left = cand[:, None] & ~torch.zeros_like(est[:, :, 0], dtype=torch.bool).scatter_(2, top, top_ok)
    left_logit = torch.logsumexp(est.masked_fill(~left[:, :, None], float("-inf")), -1)
    fb, fv = select_blocks(est.new_zeros(b, g, 0), n_blocks, SparseAttention(
        blk, cfg.sink, cfg.window, 0))
    offs = torch.arange(blk, device=dev)
    fpos = (fb[..., None] * blk + offs).flatten(2)
    fok = (fv[..., None] & (fb[..., None] * blk + offs < n[:, None, None, None])).flatten(2)
    pos, ok = torch.cat([fpos, top], 2), torch.cat([fok, top_ok], 2)  # [B, G, M]
    bid = tables.gather(1, (pos // blk).flatten(1)).view(pos.shape)
    flat = ((bid * g + torch.arange(g, device=dev)[None, :, None]) * blk + pos % blk).flatten()
    ks = k.reshape(-1, d).index_select(0, flat).view(b, g, -1, d).float()
    vs = v.reshape(-1, d).index_select(0, flat).view(b, g, -1, d).float()
    logits = (qg @ ks.transpose(-1, -2) * sc).masked_fill(~ok[:, :, None], float("-inf"))
    vsum_c = (vsum[ids].transpose(1, 2) * cand_b[:, None, :, None]).sum(2)  # [B, G, D]
    v_top = (vs[:, :, fpos.shape[-1]:] * top_ok[..., None]).sum(2)
    v_left = (vsum_c - v_top) / left.sum(-1, keepdim=True).clamp(min=1)
    w = torch.softmax(torch.cat([logits, left_logit[..., None]], -1), -1)  # [B, G, hg, M + 1]
    out = w[..., :-1] @ vs + w[..., -1:] * v_left[:, :, None]
    return out.reshape(b, h, 1, d).to(q.dtype)


def read_positions(n: list[int], cfg: SparseAttention) -> list[int]:
    """KV positions one query of each row reads (per layer and KV head)."""
    out = []
    for m in n:
        nb = -(-m // cfg.block)
        if nb <= cfg.budget:
            out.append(m)
        else:  # sink and topk blocks are full; the window's last block holds m - (nb-1)*block
            out.append((cfg.sink + cfg.topk + cfg.window - 1) * cfg.block + m - (nb - 1) * cfg.block)
    return out


def quantize_keys(keys: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed `bits`-bit codes (int8) and a float32 scale per key (absmax over its channels):
    keys ~= codes * scale[..., None]."""
    levels = 2 ** (bits - 1) - 1
    scale = keys.float().abs().amax(-1).clamp(min=1e-8) / levels
    codes = (keys.float() / scale[..., None]).round().clamp(-levels, levels).to(torch.int8)
    return codes, scale


def summary_layout(bits: int, block: int, plane: Plane) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """What sparse attention keeps beside each pool block, per layer: name -> (shape, dtype).
    A min and a max key (Quest), or with `bits` the codes (int8 storage), a float32 scale per
    key and a float32 sum of values."""
    g, d = plane.n_kv_head, plane.head_dim
    if not bits:
        return {"kmin": ((g, d), plane.dtype), "kmax": ((g, d), plane.dtype)}
    return {"codes": ((g, block, d), torch.int8), "kscale": ((g, block), torch.float32),
            "vsum": ((g, d), torch.float32)}


def summary_bytes(cfg: SparseAttention, plane: Plane) -> int:
    """Bytes kept beside each pool block (all layers; `summary_layout`)."""
    return plane.n_layer * sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size()
                               for shape, dtype in summary_layout(cfg.bits, cfg.block, plane).values())


# --- state kept beside the engine's KV pool ----------------------------------------------------
class BlockSummaries:
    """Per-channel min and max of the keys of every complete block of the paged pool:
    kmin, kmax [n_layer, pool blocks + 1, n_kv_head, head_dim], indexed by block id (the pool's
    block is the sparse block); with `bits`, instead, codes [.., block, head_dim] (int8), kscale
    [.., block] and vsum [.., head_dim] (the values' sum), float32. `done[id]` says block `id` is summarised; a block shared by
    several sequences (a prompt's) is summarised once. Filled lazily by `update`; the engine
    calls `forget` for blocks it hands out afresh."""

    def __init__(self, pool, bits: int = 0):
        self.pool, self.block, self.bits = pool, pool.block, bits
        self.layout = summary_layout(bits, pool.block, pool.planes[0])
        self.names = tuple(self.layout)
        for name in self.names:
            setattr(self, name, None)
        self.done: list[bool] = []
        self._fit()

    def _fit(self) -> None:
        """Grow to the pool's block count (summaries of existing blocks kept)."""
        n = self.pool.n_blocks + 1
        first = getattr(self, self.names[0])
        if first is not None and first.shape[1] >= n:
            return
        lay = self.pool.planes[0].n_layer
        for name, (shape, dtype) in self.layout.items():
            new = torch.zeros((lay, n) + shape, dtype=dtype, device=self.pool.kv[0].device)
            old = getattr(self, name)
            if old is not None:
                new[:, :old.shape[1]] = old
            setattr(self, name, new)
        self.done += [False] * (n - len(self.done))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (getattr(self, n) for n in self.names))

    def forget(self, ids: list[int]) -> None:
        """Blocks `ids` hold new contents: nothing of them is summarised."""
        for i in ids:
            if i < len(self.done):
                self.done[i] = False

    def update(self, tables: list[list[int]], written: list[int]) -> list[int]:
        """Summarise the complete blocks of each row (`tables[r]` its block ids, `written[r]` its
        positions holding keys); returns how many blocks each row had summarised (a shared
        block counts for the first row that needed it)."""
        self._fit()
        todo, made = [], []
        for ids, w in zip(tables, written):
            new = [i for i in ids[:w // self.block] if not self.done[i]]
            for i in new:
                self.done[i] = True
            todo += new
            made.append(len(new))
        if todo:
            idx = torch.tensor(todo, device=self.pool.kv[0].device)
            blk = self.pool.kv[0][:, 0].index_select(1, idx)  # [L, P, G, block, D]
            if self.bits:
                self.codes[:, idx], self.kscale[:, idx] = quantize_keys(blk, self.bits)
                self.vsum[:, idx] = self.pool.kv[0][:, 1].index_select(1, idx).float().sum(3)
            else:
                self.kmin[:, idx] = blk.amin(3)
                self.kmax[:, idx] = blk.amax(3)
        return made


@dataclass
class SparseCounters:
    """What decode steps read, in KV positions per layer and KV head. A position is its key and
    value; a block summary (min and max) counts as one position, summarising a block reads its
    keys (block / 2 positions). Dense attention of a token at position p reads p + 1 positions.

    kv_read_fraction: the mean over decoded tokens of (positions read / dense), the short early
    tokens (dense) included; kv_read_fraction_total: all positions read over all dense ones
    (long tokens weigh more); kv_read_fraction_with_summaries: as kv_read_fraction with the
    summaries read for the selection and made for new blocks added.
    """

    steps: int = 0  # decode steps
    sparse_steps: int = 0  # of which took the sparse path
    tokens: int = 0  # tokens decoded (rows x steps)
    read: int = 0  # positions attended to
    dense: int = 0  # positions dense attention would read
    fraction_sum: float = 0.0  # sum over tokens of read / dense
    summary_sum: float = 0.0  # sum over tokens of summary reads / dense

    def add(self, n: list[int], read: list[int], summaries: list[float] | None = None) -> None:
        self.steps += 1
        self.sparse_steps += summaries is not None
        self.tokens += len(n)
        self.read += sum(read)
        self.dense += sum(n)
        self.fraction_sum += sum(r / m for r, m in zip(read, n))
        if summaries is not None:
            self.summary_sum += sum(s / m for s, m in zip(summaries, n))

    def as_dict(self) -> dict:
        t = max(1, self.tokens)
        return {"steps": self.steps, "sparse_steps": self.sparse_steps, "tokens": self.tokens,
                "kv_read_fraction": self.fraction_sum / t,
                "kv_read_fraction_total": self.read / max(1, self.dense),
                "kv_read_fraction_with_summaries": (self.fraction_sum + self.summary_sum) / t}


@dataclass
class SparseStep:
    """One sparse decode step of rows 0..B-1, handed to the model's forward as `sparse`."""

    cfg: SparseAttention
    summ: BlockSummaries
    tables: torch.Tensor  # [B, width] block ids of each row
    n: torch.Tensor  # [B] positions of each row, the new token's included
    n_blocks: torch.Tensor  # [B]
    n_cand: int  # blocks 0..n_cand-1 hold every row's candidates

    def attend(self, layer: int, q: torch.Tensor, cache, scale: float | None = None) -> torch.Tensor:
        """q [B, H, 1, D] of rows 0..B-1; cache: the `paged.PagedKV` the forward writes to."""
        s, nc = self.summ, self.n_cand
        tab = self.tables
        kv = cache.layer(layer)
        if self.cfg.bits:
            return estimate_attend(q, kv[0], kv[1], tab, self.n, self.n_blocks, self.cfg, nc,
                                   s.codes[layer], s.kscale[layer], s.vsum[layer], scale)
        kmin = s.kmin[layer][tab[:, :nc]].transpose(1, 2)  # [B, G, nc, D]
        kmax = s.kmax[layer][tab[:, :nc]].transpose(1, 2)
        scores = quest_bound(q[:, :, 0], kmin, kmax)
        blocks, valid = select_blocks(scores, self.n_blocks, self.cfg)
        return gather_attend(q, kv[0], kv[1], tab, blocks, valid, self.n, self.cfg.block, scale)


def plan_step(cfg: SparseAttention, summ: BlockSummaries, lengths: list[int], counters: SparseCounters,
              tables: list[list[int]], table: torch.Tensor) -> SparseStep | None:
    """The sparse step of rows with `lengths` positions (new token included) and block ids
    `tables` (`table`: the same as a [B, width] tensor), or None when every row is short enough
    to be dense; summaries brought up to date and the reads counted."""
    nbs = [-(-m // cfg.block) for m in lengths]
    if max(nbs) <= cfg.budget:
        counters.add(lengths, lengths)
        return None
    made = summ.update(tables, [m - 1 for m in lengths])  # the new token's key is not written yet
    cands = [nb - cfg.window - cfg.sink if nb > cfg.budget else 0 for nb in nbs]  # blocks
    read = read_positions(lengths, cfg)
    if cfg.bits:  # the key copy of every candidate (codes and a scale) is read; the value sums
        keys = summ.pool.kv[0]  # are summaries, as is making them (keys and values of a block)
        elem, d = keys.element_size(), keys.shape[-1]
        per_key = cfg.bits / (16 * elem) + 4 / (2 * d * elem)  # of a position (key + value)
        read = [r + c * cfg.block * per_key for r, c in zip(read, cands)]
        summaries = [c * 2 / elem + k * cfg.block for c, k in zip(cands, made)]
    else:
        summaries = [c + k * cfg.block / 2 for c, k in zip(cands, made)]
    counters.add(lengths, read, summaries)
    dev = table.device
    return SparseStep(cfg, summ, table[:len(lengths)], torch.tensor(lengths, device=dev),
                      torch.tensor(nbs, device=dev), max(0, max(nbs) - cfg.window))
