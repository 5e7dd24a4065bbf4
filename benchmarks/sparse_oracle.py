"""How sparse can decode attention be on long-mode chains, given a perfect choice of positions?

An upper bound for `engine.sparse` (not an engine option: the oracle reads every key to choose).
Each decode step of every layer attends to `sink` first positions, the `window` newest and the
`topk` others of largest exact q.k per query head. Variants:

- `oracle`: softmax over the chosen positions only (what any top-k selection does at best);
- `oracle-realloc`: the same plus SparQ's mean-value reallocation with the exact mass, i.e.
  alpha * attention(chosen) + (1 - alpha) * mean value of the positions left out, alpha the
  exact softmax mass of the chosen positions;
- `sparq<r>`: SparQ (Ribar et al. 2024) as published: the scores approximated from the r
  channels of largest |q| of every key (r/(2 * head_dim) of the KV read, counted), the topk
  chosen and alpha estimated from them, reallocation to the mean of all values;
- `q<bits>`: the scores estimated from every key quantised to `bits` bits (absmax per key and
  head; a copy of the keys at bits / (2 * the pool's bits) of the KV, counted) choose the topk;
  the chosen positions are attended exactly and the ones left out as one more position whose
  logit is the log-sum-exp of their estimated scores and whose value is their mean (a sum of
  all values, kept, minus the chosen ones).

KV read per decoded token: (chosen positions + the channels SparQ reads) / positions, the mean
over tokens of layer 0 (every layer reads the same).

    python benchmarks/sparse_oracle.py --problems 200 --seed 1 dense oracle:4,8,8 \\
        oracle-realloc:4,8,8 sparq4:4,8,8
"""
from __future__ import annotations

import argparse
import json

import torch

from ttscale.engine import sparse
from ttscale.engine.task_stops import with_task_stops
from ttscale.engine.torch_engine import TorchEngine
from ttscale.models.registry import resolve_model
from ttscale.tasks import get_task
from ttscale.tasks.effort import LONG_MAX_TOKENS, apply_effort
from ttscale.types import GenerationRequest, SamplingParams


class Oracle:
    """Replaces `SparseStep.attend` (the engine's sparse decode path) for one run."""

    def __init__(self, variant: str, sink: int, window: int, topk: int) -> None:
        self.variant, self.sink, self.window, self.topk = variant, sink, window, topk
        self.rank = int(variant[5:]) if variant.startswith("sparq") else 0
        self.bits = int(variant[1:]) if variant.startswith("q") else 0
        self.read, self.tokens = 0.0, 0

    def attend(self, step, layer: int, q: torch.Tensor, cache, scale=None) -> torch.Tensor:
        k, v = cache.layer(layer)[:2]
        b, h, _, d = q.shape
        g, blk = k.shape[1], step.cfg.block
        ids = step.tables[:, :int(step.n_blocks.max())]
        rows = (ids[:, None, :] * g + torch.arange(g)[None, :, None]) * blk
        flat = (rows[..., None] + torch.arange(blk)).flatten()
        ks = k.reshape(-1, d).index_select(0, flat).view(b, g, -1, d).repeat_interleave(h // g, 1)
        vs = v.reshape(-1, d).index_select(0, flat).view(b, g, -1, d).repeat_interleave(h // g, 1)
        n, pos = step.n, torch.arange(ks.shape[2])
        ok = pos[None, :] < n[:, None]
        qa = q[:, :, 0]
        exact = ((qa[:, :, None] * ks).sum(-1) * (scale or d ** -0.5)).masked_fill(~ok[:, None], -torch.inf)
        keep = (pos[None, :] < self.sink) | ((pos[None, :] >= n[:, None] - self.window) & ok)
        rank_by = exact
        if self.rank:
            i1 = qa.abs().topk(self.rank, -1).indices
            qr = qa.gather(-1, i1)
            kr = ks.gather(-1, i1[:, :, None, :].expand(-1, -1, ks.shape[2], -1))
            temp = (d * qr.abs().sum(-1) / qa.abs().sum(-1)).sqrt()[..., None]
            rank_by = ((qr[:, :, None] * kr).sum(-1) / temp).masked_fill(~ok[:, None], -torch.inf)
        if self.bits:  # every key at `bits` bits (absmax per key and head), exact otherwise
            levels = 2 ** (self.bits - 1) - 1
            step_size = ks.abs().amax(-1, keepdim=True).clamp(min=1e-8) / levels
            kq = (ks / step_size).round().clamp(-levels, levels) * step_size
            rank_by = ((qa[:, :, None] * kq).sum(-1) * (scale or d ** -0.5)).masked_fill(~ok[:, None], -torch.inf)
        top = rank_by.masked_fill(keep[:, None], -torch.inf).topk(min(self.topk, ks.shape[2]), -1).indices
        chosen = keep[:, None].expand_as(exact).clone().scatter_(-1, top, True) & ok[:, None]
        if layer == 0:
            for m in n.tolist():
                self.read += min(1.0, (min(m, self.sink + self.window + self.topk)
                                       + m * self.rank / (2 * d)
                                       + m * self.bits / (2 * 8 * k.element_size())
                                       + (m / (2 * d) if self.bits else 0)) / m)  # + a scale per key
                self.tokens += 1
        if self.bits:  # the positions left out as one: estimated log-mass, mean value
            left = ok[:, None] & ~chosen
            logit = torch.logsumexp(rank_by.masked_fill(~left, -torch.inf), -1, keepdim=True)
            mean = (left[..., None] * vs).sum(2) / left.sum(-1, keepdim=True).clamp(min=1)
            w = torch.softmax(torch.cat([exact.masked_fill(~chosen, -torch.inf), logit], -1), -1)
            return (w[..., :-1, None] * vs).sum(2, keepdim=True) + w[..., -1:, None] * mean[:, :, None]
        out = torch.softmax(exact.masked_fill(~chosen, -torch.inf), -1)[:, :, None] @ vs
        if self.variant != "oracle":
            mass = torch.softmax(rank_by, -1)  # exact for oracle-realloc, estimated for sparq
            alpha = (mass * chosen).sum(-1)[..., None, None]
            left = ok[:, None] & (True if self.rank else ~chosen)
            mean = (left[..., None] * vs).sum(2, keepdim=True) / left.sum(-1)[..., None, None].clamp(min=1)
            out = alpha * out + (1 - alpha) * mean
        return out


def run(model: str, task_name: str, level: int, problems: int, seed: int, setting: str) -> dict:
    variant, _, numbers = setting.partition(":")
    task = get_task(task_name)
    probs = [apply_effort(p, "high") for p in task.problems("test", level=level, n=problems, seed=seed)]
    reqs = [GenerationRequest(p.prompt, SamplingParams(temperature=0.0, max_tokens=LONG_MAX_TOKENS))
            for p in probs]
    saved = sparse.SparseStep.attend
    oracle = None
    if variant != "dense":
        oracle = Oracle(variant, *(int(x) for x in numbers.split(",")))
        sparse.SparseStep.attend = lambda step, *a, **kw: oracle.attend(step, *a, **kw)
    try:  # block 8, one sink and one window block: every decode step takes the sparse path
        engine = TorchEngine(resolve_model(model), sparse_attention=None if oracle is None
                             else "block=8,sink=1,window=1,topk=0")
        res = with_task_stops(engine, task).generate(reqs)
    finally:
        sparse.SparseStep.attend = saved
    acc = sum(task.is_correct(p, r.completions[0].text) for p, r in zip(probs, res)) / len(probs)
    return {"setting": setting, "model": model, "task": task_name, "level": level, "seed": seed,
            "problems": problems, "accuracy": acc,
            "kv_read_fraction": 1.0 if oracle is None else oracle.read / max(1, oracle.tokens)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="+", help="dense, or VARIANT:sink,window,topk with VARIANT "
                    "oracle, oracle-realloc or sparq<r>")
    ap.add_argument("--model", default="ttscale-base-long")
    ap.add_argument("--task", default="arith")
    ap.add_argument("--level", type=int, default=5)
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for s in args.settings:
        print(json.dumps(run(args.model, args.task, args.level, args.problems, args.seed, s)), flush=True)


if __name__ == "__main__":
    main()
