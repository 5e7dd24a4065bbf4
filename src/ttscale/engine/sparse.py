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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ttscale.errors import TTScaleError

FIELDS = ("block", "sink", "window", "topk")
ACCEPTED = ('"block=16,sink=1,window=4,topk=4" (or a dict / SparseAttention with those keys: '
            "block >= 1 positions, sink >= 0, window >= 1, topk >= 0 blocks)")


@dataclass(frozen=True)
class SparseAttention:
    """block: positions per block; sink, window, topk: blocks (see the module doc)."""

    block: int = 16
    sink: int = 1
    window: int = 4
    topk: int = 4

    @property
    def budget(self) -> int:
        """Most blocks a query attends to."""
        return self.sink + self.window + self.topk

    def __str__(self) -> str:
        return f"block={self.block},sink={self.sink},window={self.window},topk={self.topk}"


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
    lows = {"block": 1, "sink": 0, "window": 1, "topk": 0}
    for k, low in lows.items():
        v = getattr(cfg, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
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


# --- state kept beside the engine's KV pool ----------------------------------------------------
class BlockSummaries:
    """Per-channel min and max of the keys of every complete block of the paged pool:
    kmin, kmax [n_layer, pool blocks + 1, n_kv_head, head_dim], indexed by block id (the pool's
    block is the sparse block). `done[id]` says block `id` is summarised; a block shared by
    several sequences (a prompt's) is summarised once. Filled lazily by `update`; the engine
    calls `forget` for blocks it hands out afresh."""

    def __init__(self, pool):
        self.pool, self.block = pool, pool.block
        self.kmin = self.kmax = None
        self.done: list[bool] = []
        self._fit()

    def _fit(self) -> None:
        """Grow to the pool's block count (summaries of existing blocks kept)."""
        n = self.pool.n_blocks + 1
        if self.kmin is not None and self.kmin.shape[1] >= n:
            return
        keys = self.pool.kv[0]
        shape = (keys.shape[0], n, keys.shape[3], keys.shape[5])
        kmin = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
        kmax = torch.zeros_like(kmin)
        if self.kmin is not None:
            kmin[:, :self.kmin.shape[1]] = self.kmin
            kmax[:, :self.kmax.shape[1]] = self.kmax
        self.kmin, self.kmax = kmin, kmax
        self.done += [False] * (n - len(self.done))

    @property
    def nbytes(self) -> int:
        return 2 * self.kmin.numel() * self.kmin.element_size()

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
            idx = torch.tensor(todo, device=self.kmin.device)
            blk = self.pool.kv[0][:, 0].index_select(1, idx)  # [L, P, G, block, D]
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
        kmin = s.kmin[layer][tab[:, :nc]].transpose(1, 2)  # [B, G, nc, D]
        kmax = s.kmax[layer][tab[:, :nc]].transpose(1, 2)
        scores = quest_bound(q[:, :, 0], kmin, kmax)
        blocks, valid = select_blocks(scores, self.n_blocks, self.cfg)
        kv = cache.layer(layer)
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
    summaries = [(nb - cfg.window - cfg.sink if nb > cfg.budget else 0) + k * cfg.block / 2
                 for nb, k in zip(nbs, made)]
    counters.add(lengths, read_positions(lengths, cfg), summaries)
    dev = summ.kmin.device
    return SparseStep(cfg, summ, table[:len(lengths)], torch.tensor(lengths, device=dev),
                      torch.tensor(nbs, device=dev), max(0, max(nbs) - cfg.window))
