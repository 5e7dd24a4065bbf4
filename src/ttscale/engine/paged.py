"""Paged KV: fixed-size blocks of keys and values in one pool, shared by reference count.

A `BlockPool` holds, per model it serves (the target, and a speculative draft sharing the block
ids), one tensor [n_layer, 2, capacity + 1, n_kv_head, block, head_dim]. Block 0 is the scratch
block: the writes of padding tokens go there and nothing reads it. A sequence owns a list of
block ids (its block table); position p lives in block table[p // block] at offset p % block.
Blocks are handed out from a free list and carry a reference count: the n samples of a request
`share` the prompt's blocks, and a block written while shared is first copied
(`copy_on_write`), so no sample ever writes into another's KV.

With a `BlockCache` (`engine.block_cache`, automatic prefix caching) a released block the
cache has registered is not freed: it stays, unreferenced, in the cache's least-recently-used
order, counts as free, and is evicted when `allocate` finds no free block (before the pool
grows: cached blocks live in room the rows made, and the blocks rows use stay few and close,
which `paged_attention` needs); a registered block is copied before any write, even by its
only user.

With a capacity (from `kv_memory`) the pool never holds more blocks; `allocate` then raises
`PoolFull` and the engine preempts. Without one it grows as needed (never shrinks).

`PagedKV` is what a forward receives: the pool seen through the batch's block tables, with
`write` (K/V of new tokens by block id and offset), `read` (a row range's blocks gathered
into the dense [B, n_kv_head, kv_len, head_dim] layout that `scaled_dot_product_attention`
takes) and `attend` (a decode step on the pool in place, `engine.paged_attention`; several
queries a row: `read` and SDPA). Plain PyTorch, hand-written: CPU torch has no
paged-attention kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ttscale.engine import paged_attention
from ttscale.engine.block_cache import BlockCache

SCRATCH = 0  # the block padding writes go to; never allocated, never read


class PoolFull(Exception):
    """The bounded pool has no free block; the engine preempts and tries again."""


@dataclass(frozen=True)
class Plane:
    """The KV shape of one model the pool serves."""

    n_layer: int
    n_kv_head: int
    head_dim: int
    dtype: torch.dtype

    def block_bytes(self, block: int) -> int:
        return 2 * self.n_layer * self.n_kv_head * block * self.head_dim * \
            torch.empty((), dtype=self.dtype).element_size()


class BlockPool:
    """Blocks of `block` positions for each plane; ids 1..capacity (0 is scratch).

    capacity: most blocks (None: grow as needed). extra_block_bytes: bytes kept beside each
    block by others (sparse attention's summaries), counted in `block_bytes`. cache: the prefix
    cache indexing the pool's blocks (None: none).
    """

    def __init__(self, planes: list[Plane], block: int, device: torch.device | str,
                 capacity: int | None = None, extra_block_bytes: int = 0,
                 cache: BlockCache | None = None):
        if block < 1:
            raise ValueError(f"block={block} is out of range; accepted: >= 1")
        self.planes, self.block, self.device = planes, block, torch.device(device)
        self.capacity = capacity
        self.block_bytes = sum(p.block_bytes(block) for p in planes) + extra_block_bytes
        self.kv: list[torch.Tensor] = [self._new(p, 1) for p in planes]  # scratch only
        self.refs: list[int] = [0]  # per block id; the scratch block is never referenced
        self._free: list[int] = []
        self.cache = cache
        if cache is not None:
            cache.attach(self)

    def _new(self, p: Plane, n: int) -> torch.Tensor:
        return torch.zeros(p.n_layer, 2, n, p.n_kv_head, self.block, p.head_dim, dtype=p.dtype,
                           device=self.device)

    @property
    def n_blocks(self) -> int:
        """Blocks allocated in memory (scratch excluded)."""
        return len(self.refs) - 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv)

    @property
    def idle(self) -> int:
        """Unreferenced blocks the prefix cache keeps (free to evict)."""
        return len(self.cache.lru) if self.cache is not None else 0

    @property
    def used(self) -> int:
        """Blocks referenced by some sequence."""
        return self.n_blocks - len(self._free) - self.idle

    def n_free(self) -> int:
        """Blocks `allocate` can still hand out (growing the pool where it may, evicting
        unreferenced cached blocks)."""
        if self.capacity is None:
            return 1 << 62
        return self.capacity - self.used

    def allocate(self, n: int = 1) -> list[int]:
        """n fresh blocks (reference count 1, contents undefined): free ones, else the least
        recently used unreferenced cached ones, else new ones; PoolFull if the bound stops it."""
        short = min(n - len(self._free), self.idle)
        if short > 0:
            self._free[:0] = [self.cache.evict() for _ in range(short)][::-1]  # LRU first
        if n > len(self._free):
            self._grow(n - len(self._free))
        ids = [self._free.pop() for _ in range(n)]
        for i in ids:
            self.refs[i] = 1
        return ids

    def share(self, ids: list[int]) -> None:
        """One more sequence refers to blocks `ids`."""
        for i in ids:
            assert self.refs[i] > 0, f"block {i} is free"
            self.refs[i] += 1

    def take(self, ids: list[int]) -> None:
        """One more sequence refers to cached blocks `ids` (unreferenced ones leave the LRU)."""
        for i in ids:
            if self.refs[i] == 0:
                del self.cache.lru[i]
            self.refs[i] += 1

    def release(self, ids: list[int]) -> None:
        """A sequence drops blocks `ids`; a block nobody refers to is free again, or idle in
        the prefix cache when registered there (the last block first in its LRU)."""
        idle = []
        for i in ids:
            assert self.refs[i] > 0, f"block {i} is free"
            self.refs[i] -= 1
            if self.refs[i] == 0:
                (idle if self.cache is not None and i in self.cache else self._free).append(i)
        for i in reversed(idle):
            self.cache.lru[i] = None

    def put_free(self, ids: list[int]) -> None:
        """Unreferenced blocks the prefix cache forgot become free."""
        self._free.extend(ids)

    def shared(self, i: int) -> bool:
        """Whether a write into block `i` must copy it first (others refer to it, or the prefix
        cache holds it)."""
        return self.refs[i] > 1 or (self.cache is not None and i in self.cache)

    def copy_on_write(self, i: int) -> int:
        """A block the caller may write: `i` itself when only it refers to it and it is not
        cached, else a copy (the caller's reference moves from `i` to the copy)."""
        if not self.shared(i):
            return i
        new = self.allocate(1)[0]
        self.copy_blocks([i], [new])
        self.release([i])
        return new

    def copy_blocks(self, src: list[int], dst: list[int]) -> None:
        """Blocks `dst` take the contents of blocks `src` (every plane)."""
        s = torch.tensor(src, device=self.device)
        d = torch.tensor(dst, device=self.device)
        for t in self.kv:
            t[:, :, d] = t[:, :, s]

    def gather_blocks(self, ids: list[int]) -> list[torch.Tensor]:
        """A copy of the contents of blocks `ids`, per plane (for `put_blocks`)."""
        idx = torch.tensor(ids, device=self.device)
        return [t.index_select(2, idx) for t in self.kv]

    def put_blocks(self, ids: list[int], saved: list[torch.Tensor]) -> None:
        """Blocks `ids` take contents `gather_blocks` saved."""
        idx = torch.tensor(ids, device=self.device)
        for t, x in zip(self.kv, saved):
            t[:, :, idx] = x

    def _grow(self, need: int) -> None:
        n = self.n_blocks
        if self.capacity is not None and n + need > self.capacity:
            raise PoolFull(f"{need} more blocks wanted; the pool holds {self.capacity}, "
                           f"{self.used} of them in use")
        grow = max(need, n // 8, 16)
        if self.capacity is not None:
            grow = min(grow, self.capacity - n)
        self.kv = [torch.cat([t, self._new(p, grow)], 2) for t, p in zip(self.kv, self.planes)]
        self.refs += [0] * grow
        self._free = list(range(n + grow, n, -1)) + self._free
        # lowest ids are handed out first (pop from the end): keeps a sequence's blocks close


@dataclass
class Slots:
    """One forward's writes (rows of a layer's keys seen as [blocks * n_kv_head * block,
    head_dim]) and the read indices it computed (by row range and length)."""

    rows: torch.Tensor
    reads: dict = field(default_factory=dict)


class PagedKV:
    """The cache a model's forward receives: plane `plane` of `pool` seen through `tables`
    ([rows, width] block ids; entries past a row's blocks are `SCRATCH`). `scratch` is the
    position padding tokens carry: they write to the scratch block."""

    def __init__(self, pool: BlockPool, tables: torch.Tensor, scratch: int, plane: int = 0):
        self.pool, self.tables, self.scratch, self.plane = pool, tables, scratch, plane
        self.block = pool.block

    def slots(self, row0: int, pos: torch.Tensor) -> Slots:
        """Where the tokens at `pos` ([B, M]) of rows row0.. are written, for one forward."""
        b = pos.shape[0]
        col = (pos // self.block).clamp(max=self.tables.shape[1] - 1)
        blk = self.tables[row0:row0 + b].gather(1, col)
        blk = blk.masked_fill(pos >= self.scratch, SCRATCH)
        return Slots(self._rows(blk[..., None], (pos % self.block)[..., None]).flatten())

    def _rows(self, blk: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        """Row indices into a layer's keys seen as [blocks * n_kv_head * block, head_dim], for
        block ids `blk` and offsets `off` broadcast over a last dim of KV heads."""
        kvh = self.pool.planes[self.plane].n_kv_head
        heads = torch.arange(kvh, device=blk.device)
        return (blk * kvh + heads) * self.block + off

    def write(self, layer: int, slots: Slots, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, M, n_kv_head, head_dim] into their slots."""
        kv = self.pool.kv[self.plane][layer]
        d = kv.shape[-1]
        kv[0].view(-1, d).index_copy_(0, slots.rows, k.reshape(-1, d))
        kv[1].view(-1, d).index_copy_(0, slots.rows, v.reshape(-1, d))

    def read(self, layer: int, row0: int, b: int, kv_len: int, slots: Slots | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions 0..kv_len-1 of rows row0..row0+b-1, each
        [b, n_kv_head, kv_len, head_dim]: one gather of whole (block, head) chunks of the rows'
        blocks into the layout SDPA takes (the indices computed once per forward when its
        `slots` are given)."""
        nb = -(-kv_len // self.block)
        key = (row0, b, nb)
        rows = slots.reads.get(key) if slots is not None else None
        if rows is None:
            kvh = self.pool.planes[self.plane].n_kv_head
            blk = self.tables[row0:row0 + b, :nb]
            rows = (blk[:, None, :] * kvh + torch.arange(kvh, device=blk.device)[None, :, None]).flatten()
            if slots is not None:
                slots.reads[key] = rows
        kv = self.pool.kv[self.plane][layer]
        d = kv.shape[-1]
        k, v = (kv[i].view(-1, self.block * d).index_select(0, rows).view(b, -1, nb * self.block, d)
                for i in (0, 1))  # along dim 0 of a 2-D view: several times faster on CPU
        return k[:, :, :kv_len], v[:, :, :kv_len]

    def attend(self, layer: int, q: torch.Tensor, row0: int, b: int, kv_len: int,
               mask: torch.Tensor | None, slots: Slots | None = None,
               scale: float | None = None) -> torch.Tensor:
        """Attention of q [b, H, M, D] (rows row0..) over positions 0..kv_len-1 under `mask`
        ([b, 1, M, kv_len] or None): one query per row is computed on the pool in place
        (`engine.paged_attention`), several through `read` and SDPA."""
        if q.shape[2] == 1:
            nb = -(-kv_len // self.block)
            key = ("plan", row0, b, nb)
            if slots is not None and key in slots.reads:
                p = slots.reads[key]
            else:
                p = paged_attention.plan(self.tables[row0:row0 + b, :nb])
                if slots is not None:
                    slots.reads[key] = p
            if p is not None:
                kv = self.pool.kv[self.plane][layer]
                return paged_attention.attend(p, q, kv[0], kv[1], mask, kv_len, scale)
        k, v = self.read(layer, row0, b, kv_len, slots)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=k.shape[1] != q.shape[1])

    def layer(self, layer: int) -> torch.Tensor:
        """[2, blocks + 1, n_kv_head, block, head_dim]: the pool tensor of one layer."""
        return self.pool.kv[self.plane][layer]


def standalone(plane: Plane, rows: int, length: int, block: int = 16,
               device: torch.device | str = "cpu") -> PagedKV:
    """A cache of `rows` sequences of up to `length` positions, each with blocks of its own
    (row r: blocks r*nb+1 .. (r+1)*nb): for a model's forward outside the engine."""
    nb = -(-length // block)
    pool = BlockPool([plane], block, device)
    tables = [pool.allocate(nb) + [SCRATCH] for _ in range(rows)]
    return PagedKV(pool, torch.tensor(tables, dtype=torch.long, device=device), scratch=length)
