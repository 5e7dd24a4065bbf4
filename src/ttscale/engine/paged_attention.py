"""Decode attention computed on the paged pool in place (one query per row), plain PyTorch.

CPU torch has no paged-attention kernel, and gathering each row's blocks into the dense layout
SDPA takes copies every key and value of the batch every layer every step: on a CPU that copy
costs as much as the attention. Here the pool is read where it lies instead:
- a block read by one row (the common case: generated tokens) is multiplied, in place and all
  such blocks in one batched matmul over the pool's block dimension, by the query of its row
  (queries scattered block-major: a tensor [blocks, heads, head_dim], small next to the keys);
- a block several rows read (a prompt's blocks, shared by the n samples) is gathered once and
  multiplied by the queries of all its readers (one matmul per block, padded to the most
  readers), so a shared prompt is read once per step, not once per sample;
- the scores of each row are assembled from those two tables (a gather of [heads, block]
  scores per block, 1/head_dim of the keys), masked and softmaxed as SDPA does, and the
  values are applied the same two ways, the row's output the sum of its blocks' parts.
The result equals SDPA's up to float rounding (the sums run in another order).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SCRATCH = 0


@dataclass
class DecodePlan:
    """Which rows read which blocks in one forward (the same for every layer).

    n: blocks 0..n-1 of the pool are visited in place; own_blocks / own_rows: the blocks read
    by one row, and that row; shared / readers: blocks several rows read, and their readers
    [S, R] (padded with row b, a zero query); pick [b, nb]: where the part of row i's block j
    lies in the concatenation (in-place blocks 0..n-1, shared pairs n + s*R + r, an empty
    entry n + S*R for the scratch block of padding columns).
    """

    n: int
    own_blocks: torch.Tensor
    own_rows: torch.Tensor
    shared: torch.Tensor
    readers: torch.Tensor
    pick: torch.Tensor
    own_pairs: torch.Tensor  # [b*nb] bool: pair (i, j) is an in-place block
    shared_slot: torch.Tensor  # [P_s] s*R + r of each shared pair, in pair order
    shared_pairs: torch.Tensor  # [b*nb] bool


MIN_ROWS = 32  # fewer rows: gathering them costs less than this path's extra small ops


def plan(tables: torch.Tensor, min_rows: int = MIN_ROWS) -> DecodePlan | None:
    """The plan of rows whose block tables are `tables` [b, nb]; None when the batch has fewer
    than `min_rows` rows or visiting the pool in place would read much more than the rows' own
    blocks (a mostly idle pool): the caller gathers then."""
    b, nb = tables.shape
    if b < min_rows:
        return None
    dev = tables.device
    flat = tables.flatten()
    rows = torch.arange(b, device=dev).repeat_interleave(nb)
    valid = flat != SCRATCH
    n = int(flat.max()) + 1
    if n > 2 * int(valid.sum()) + 64:
        return None
    count = torch.bincount(flat[valid], minlength=n)
    c = count[flat]
    own = valid & (c == 1)
    shr = valid & (c > 1)
    s_ids, inverse = torch.unique(flat[shr], return_inverse=True)
    n_s = s_ids.numel()
    width = int(count[s_ids].max()) if n_s else 0
    rank = torch.zeros_like(inverse)
    if n_s:
        order = torch.argsort(inverse, stable=True)
        starts = torch.zeros(n_s, dtype=torch.long, device=dev)
        starts[1:] = torch.cumsum(torch.bincount(inverse, minlength=n_s), 0)[:-1]
        rank[order] = torch.arange(inverse.numel(), device=dev) - starts[inverse[order]]
    readers = torch.full((n_s, width), b, dtype=torch.long, device=dev)
    readers[inverse, rank] = rows[shr]
    slot = inverse * width + rank
    pick = torch.full((b * nb,), n + n_s * width, dtype=torch.long, device=dev)
    pick[own] = flat[own]
    pick[shr] = n + slot
    return DecodePlan(n, flat[own], rows[own], s_ids, readers, pick.view(b, nb), own, slot, shr)


def attend(p: DecodePlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           mask: torch.Tensor | None, kv_len: int, scale: float | None = None) -> torch.Tensor:
    """q [b, H, 1, D]; k, v [N, G, block, D] (one layer of the pool); mask [b, 1, 1, kv_len]
    (True: attend) or None -> [b, H, 1, D], as scaled_dot_product_attention over each row's
    positions 0..kv_len-1."""
    b, h, _, d = q.shape
    _, g, bs, _ = k.shape
    grp = h // g
    nb = p.pick.shape[1]
    n, n_s, width = p.n, p.shared.numel(), p.readers.shape[1] if p.readers.dim() == 2 else 0
    qg = torch.cat([q.view(b, g, grp, d), q.new_zeros(1, g, grp, d)])  # row b: a zero query
    qb = q.new_zeros(n, g, grp, d)
    qb[p.own_blocks] = qg[p.own_rows]
    parts = [qb @ k[:n].transpose(-1, -2)]  # [n, G, grp, bs]
    if n_s:
        ks, qs = k[p.shared], qg[p.readers]  # [S, G, bs, D], [S, R, G, grp, D]
        qs = qs.permute(0, 2, 1, 3, 4).reshape(n_s, g, width * grp, d)
        ss = (qs @ ks.transpose(-1, -2)).view(n_s, g, width, grp, bs).permute(0, 2, 1, 3, 4)
        parts.append(ss.reshape(n_s * width, g, grp, bs))
    parts.append(q.new_full((1, g, grp, bs), float("-inf")))
    scores = torch.cat(parts)[p.pick]  # [b, nb, G, grp, bs]
    scores = scores.permute(0, 2, 3, 1, 4).reshape(b, g, grp, nb * bs)[..., :kv_len]
    scores = scores * (d ** -0.5 if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask.view(b, 1, 1, kv_len), float("-inf"))
    w = torch.softmax(scores, -1)
    if kv_len < nb * bs:
        w = torch.nn.functional.pad(w, (0, nb * bs - kv_len))
    w = w.view(b, g, grp, nb, bs).permute(0, 3, 1, 2, 4).reshape(b * nb, g, grp, bs)
    wb = q.new_zeros(n, g, grp, bs)
    wb[p.own_blocks] = w[p.own_pairs]
    outs = [wb @ v[:n]]  # [n, G, grp, D]
    if n_s:
        ws = q.new_zeros(n_s * width, g, grp, bs)
        ws[p.shared_slot] = w[p.shared_pairs]
        ws = ws.view(n_s, width, g, grp, bs).permute(0, 2, 1, 3, 4).reshape(n_s, g, width * grp, bs)
        os_ = (ws @ v[p.shared]).view(n_s, g, width, grp, d).permute(0, 2, 1, 3, 4)
        outs.append(os_.reshape(n_s * width, g, grp, d))
    outs.append(q.new_zeros(1, g, grp, d))
    y = torch.cat(outs)[p.pick].sum(1)  # [b, G, grp, D]
    return y.view(b, h, 1, d)
