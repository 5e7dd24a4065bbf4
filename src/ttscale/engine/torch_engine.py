"""The project's own generation engine: plain PyTorch, batched, with automatic prefix caching.

How a `generate` call runs (continuous batching over one preallocated KV cache):
  1. admit requests while cache rows are free: look up each prompt's longest cached prefix,
     copy it in, prefill only the new tokens (prompts of similar length batched together, one
     prefill per prompt however large n is), then clone the prompt's KV rows for its n samples;
  2. decode all rows together, one token per row per step, each row at its own position;
  3. a row that ends (EOS, stop string, max_tokens, context) stores its computed tokens in the
     prefix cache, frees its row (the last row moves into the hole) and admission resumes.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ttscale.engine.flops import ModelShape
from ttscale.engine.kv_cache import KVCache
from ttscale.engine.loader import load_model
from ttscale.engine.prefix_cache import PrefixCache
from ttscale.engine.sampling import RowParams, check_params, normalize_stop, sample, sample_key
from ttscale.engine.stops import finish_text, tail_window
from ttscale.errors import TTScaleError, unknown
from ttscale.types import Completion, GenerationRequest, GenerationResult, SamplingParams, Usage


def parse_device(device: str) -> torch.device:
    """cpu, cuda or cuda:N (when a GPU is present)."""
    accepted = ["cpu", "cuda", "cuda:N"]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise unknown("device", device, accepted) from None
    if dev.type not in ("cpu", "cuda"):
        raise unknown("device", device, accepted)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TTScaleError(f"device {device!r} is not available here; accepted: cpu")
    return dev


@dataclass
class _Request:
    index: int
    ids: list[int]
    params: SamplingParams
    stops: list[str]
    max_new: int
    next_j: int = 0
    completions: list[Completion | None] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass
class _Row:
    req: _Request
    j: int
    key: int = 0  # the sampling stream of this sample (see sampling.sample_key)
    gen: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[str, float]] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Tokens of the sequence so far (prompt and generated)."""
        return len(self.req.ids) + len(self.gen)


class _Batch:
    """The rows being decoded; row i lives in cache row i, its settings in tensors of length A."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[_Row] = []
        self.next_tok = torch.zeros(0, dtype=torch.long, device=device)
        self.pos = torch.zeros(0, dtype=torch.long, device=device)
        self.steps = torch.zeros(0, dtype=torch.long, device=device)
        self.keys: list[int] = []
        self.rp = self._params()

    def _params(self) -> RowParams:
        ps = [r.req.params for r in self.rows]
        return RowParams([p.temperature for p in ps], [p.top_p for p in ps], [p.top_k for p in ps],
                         self.keys, self.device)

    def add(self, rows: list[_Row], first: torch.Tensor) -> None:
        dev = self.device
        self.rows += rows
        self.keys += [r.key for r in rows]
        self.next_tok = torch.cat([self.next_tok, first])
        self.pos = torch.cat([self.pos, torch.tensor([len(r.req.ids) for r in rows], device=dev)])
        self.steps = torch.cat([self.steps, torch.ones(len(rows), dtype=torch.long, device=dev)])
        self.rp = self._params()

    def remove(self, done: set[int], cache: KVCache) -> None:
        """Drop finished rows; the last live rows move into the holes (KV rows copied)."""
        a, keep = len(self.rows), len(self.rows) - len(done)
        holes = [i for i in sorted(done) if i < keep]
        sources = [i for i in range(keep, a) if i not in done]
        perm = list(range(keep))
        for h, s in zip(holes, sources):
            perm[h] = s
        if sources:
            cache.copy_rows(sources, holes, max(self.rows[s].length for s in sources))
        idx = torch.tensor(perm, dtype=torch.long, device=self.device)
        self.rows = [self.rows[i] for i in perm]
        self.keys = [self.keys[i] for i in perm]
        self.next_tok, self.pos, self.steps = self.next_tok[idx], self.pos[idx], self.steps[idx]
        self.rp = self._params()


class TorchEngine:
    """A `Generator` over a Llama/Qwen2/Mistral checkpoint directory (Hugging Face format).

    max_batch_size: most sequences decoded at once (cache rows); more samples wait their turn.
    max_seq_len: cap on the context (default: the model's max_position_embeddings).
    prefix_cache_bytes: memory bound of the prefix cache (0 switches prefix caching off).
    prefill_tokens: padded tokens per prefill forward when batching prompts together.
    compile: run the forward through torch.compile.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32", *,
                 max_batch_size: int = 256, max_seq_len: int | None = None,
                 prefix_cache_bytes: int = 256 * 2**20, prefill_tokens: int = 4096,
                 compile: bool = False, model_name: str | None = None):
        if max_batch_size < 1:
            raise TTScaleError(f"max_batch_size={max_batch_size} is out of range; accepted: >= 1")
        if prefix_cache_bytes < 0:
            raise TTScaleError(f"prefix_cache_bytes={prefix_cache_bytes} is out of range; accepted: >= 0")
        self.device = parse_device(device)
        loaded = load_model(model_dir, self.device, dtype)
        self.model, self.tokenizer, self.cfg = loaded.model, loaded.tokenizer, loaded.config
        self.eos = frozenset(loaded.eos_ids)
        self.model_name = model_name or Path(model_dir).name
        self.context_length = min(self.cfg.max_position, max_seq_len or self.cfg.max_position)
        self.model.setup_rope(self.context_length + 1)
        self.shape = ModelShape(self.model.n_params(), self.cfg.n_layer, self.cfg.d_model)
        self.max_batch_size, self.prefill_tokens = max_batch_size, prefill_tokens
        dt = self.model.embed.weight.dtype
        self.prefix = PrefixCache(self.cfg.n_layer, self.cfg.n_kv_head, self.cfg.head_dim, dt,
                                  self.device, prefix_cache_bytes)
        self.cache: KVCache | None = None
        self.peak_kv_bytes = 0
        self._forward = torch.compile(self.model.forward, dynamic=True) if compile else self.model.forward
        self._pieces: dict[int, str] = {}

    # --- the Generator protocol -------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model's tokenizer makes them (with BOS where its post-processor adds one)."""
        return self.tokenizer.encode(text).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        reqs = []
        for i, r in enumerate(requests):
            try:
                reqs.append(self._prepare(i, r))
            except TTScaleError as e:
                results[i] = GenerationResult([], Usage(), error=str(e))
        try:
            self._run(reqs)
        except Exception:  # noqa: BLE001 - retry alone, so one bad request fails by itself
            for req in reqs:
                try:
                    req.next_j, req.usage = 0, Usage()
                    req.completions = [None] * req.params.n
                    self._run([req])
                except Exception as e:  # noqa: BLE001
                    results[req.index] = GenerationResult([], Usage(), error=f"{type(e).__name__}: {e}")
        for req in reqs:
            if results[req.index] is None:
                results[req.index] = GenerationResult(list(req.completions), req.usage)
        return results

    # --- preparation ------------------------------------------------------------------------
    def _prepare(self, index: int, r: GenerationRequest) -> _Request:
        if not isinstance(r, GenerationRequest):
            raise TTScaleError(f"request {index} must be a GenerationRequest, got {type(r).__name__}")
        check_params(r.params, self.context_length)
        if isinstance(r.prompt, str):
            ids = self.tokenize(r.prompt)
        elif isinstance(r.prompt, (list, tuple)):
            ids = list(r.prompt)
            bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int)
                   or not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise TTScaleError(f"token id {bad[0]!r} is out of range; accepted: integers in "
                                   f"0..{self.cfg.vocab_size - 1}")
        else:
            raise TTScaleError(f"prompt must be text or a list of token ids, got {type(r.prompt).__name__}")
        if not ids:
            raise TTScaleError("prompt is empty; accepted: at least one token")
        if len(ids) >= self.context_length:
            raise TTScaleError(f"prompt has {len(ids)} tokens; the model's context is "
                               f"{self.context_length}, so a prompt may have at most "
                               f"{self.context_length - 1}")
        max_new = min(r.params.max_tokens, self.context_length - len(ids))
        return _Request(index, ids, r.params, normalize_stop(r.params.stop), max_new,
                        completions=[None] * r.params.n)

    def _ensure_cache(self, rows: int, length: int) -> KVCache:
        c = self.cache
        if c is None or c.rows < rows or c.length < length:
            rows, length = max(rows, c.rows if c else 0), max(length, c.length if c else 0)
            self.cache = None
            cfg = self.cfg
            self.cache = KVCache(cfg.n_layer, rows, cfg.n_kv_head, length, cfg.head_dim,
                                 self.model.embed.weight.dtype, self.device)
        self.peak_kv_bytes = max(self.peak_kv_bytes, self.cache.nbytes + self.prefix.nbytes)
        return self.cache

    # --- the scheduling loop ----------------------------------------------------------------
    def _run(self, reqs: list[_Request]) -> None:
        if not reqs:
            return
        cap = min(self.max_batch_size, sum(r.params.n for r in reqs))
        cache = self._ensure_cache(cap, max(len(r.ids) + r.max_new for r in reqs))
        batch = _Batch(self.device)
        pending = deque(reqs)
        while pending or batch.rows:
            if pending and len(batch.rows) < cap:
                self._admit(batch, pending, cap, cache)
            if batch.rows:
                self._decode_step(batch, cache)
        self.peak_kv_bytes = max(self.peak_kv_bytes, cache.nbytes + self.prefix.nbytes)

    def _mask(self, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """[B, 1, M, kv_len]: a query at position p sees positions <= p (within the window)."""
        keys = torch.arange(kv_len, device=self.device)
        mask = keys[None, None, :] <= pos[:, :, None]
        if self.cfg.sliding_window:
            mask &= keys[None, None, :] > pos[:, :, None] - self.cfg.sliding_window
            mask |= (pos >= kv_len)[:, :, None]  # padding: any non-empty row will do
        return mask.unsqueeze(1)

    def _admit(self, batch: _Batch, pending: deque, cap: int, cache: KVCache) -> None:
        free, chunks = cap - len(batch.rows), []
        while pending and free > 0:
            req = pending[0]
            take = min(req.params.n - req.next_j, free)
            chunks.append((req, req.next_j, take))
            req.next_j += take
            free -= take
            if req.next_j == req.params.n:
                pending.popleft()
        hits = [self.prefix.match(req.ids[:-1]) for req, _, _ in chunks]
        order = sorted(range(len(chunks)), key=lambda c: len(chunks[c][0].ids) - len(hits[c]))
        a0 = len(batch.rows)
        for rank, c in enumerate(order):
            if hits[c]:
                cache.write(a0 + rank, 0, self.prefix.gather(hits[c]))
        logits = self._prefill([(chunks[c][0].ids, len(hits[c])) for c in order], a0, cache)
        new_rows, src, dst, source_of = [], [], [], []
        for rank, c in enumerate(order):
            req, j0, _ = chunks[c]
            h = len(hits[c])
            if j0 == 0:
                req.usage.prompt_tokens, req.usage.cached_tokens = len(req.ids), h
            req.usage.flops += self.shape.span_flops(h, len(req.ids) - h)
            new_rows.append(_Row(req, j0, sample_key(req.params.seed, j0)))
            source_of.append(rank)
        for rank, c in enumerate(order):
            req, j0, take = chunks[c]
            for j in range(j0 + 1, j0 + take):
                src.append(a0 + rank)
                dst.append(a0 + len(new_rows))
                new_rows.append(_Row(req, j, sample_key(req.params.seed, j)))
                source_of.append(rank)
        cache.copy_rows(src, dst, max(len(r.req.ids) for r in new_rows))
        for rank, c in enumerate(order):
            req = chunks[c][0]
            self.prefix.insert(req.ids, cache.read(a0 + rank, 0, len(req.ids)))
        row_logits = logits[torch.tensor(source_of, device=self.device)]
        ps = [r.req.params for r in new_rows]
        rp = RowParams([p.temperature for p in ps], [p.top_p for p in ps], [p.top_k for p in ps],
                       [r.key for r in new_rows], self.device)
        first = sample(row_logits, rp, torch.zeros(len(new_rows), dtype=torch.long, device=self.device))
        batch.add(new_rows, first)
        self._accept(batch, a0, first, row_logits, cache)

    def _prefill(self, items: list[tuple[list[int], int]], row0: int, cache: KVCache) -> torch.Tensor:
        """Compute tokens ids[h:] of each (ids, h) into rows row0.., in groups; last logits [k, V]."""
        out, i = [], 0
        while i < len(items):
            j, real = i + 1, len(items[i][0]) - items[i][1]
            while j < len(items):
                m = len(items[j][0]) - items[j][1]  # items are sorted by m, so m is the widest
                if (j - i + 1) * m > max(self.prefill_tokens, m) or (j - i + 1) * m > 2 * (real + m):
                    break
                real += m
                j += 1
            group = items[i:j]
            width = max(len(ids) - h for ids, h in group)
            toks = torch.zeros(len(group), width, dtype=torch.long)
            pos = torch.full((len(group), width), cache.scratch, dtype=torch.long)
            last = []
            for b, (ids, h) in enumerate(group):
                m = len(ids) - h
                toks[b, :m] = torch.tensor(ids[h:])
                pos[b, :m] = torch.arange(h, len(ids))
                last.append(m - 1)
            toks, pos = toks.to(self.device), pos.to(self.device)
            kv_len = max(len(ids) for ids, _ in group)
            out.append(self._forward(toks, pos, cache, row0 + i, kv_len, self._mask(pos, kv_len),
                                     torch.tensor(last, device=self.device)))
            i = j
        return torch.cat(out)

    def _decode_step(self, batch: _Batch, cache: KVCache) -> None:
        lengths = [r.length for r in batch.rows]
        kv_len = max(lengths)
        pos = batch.pos[:, None]
        window = self.cfg.sliding_window
        uniform = min(lengths) == kv_len and not (window and kv_len > window)
        mask = None if uniform else self._mask(pos, kv_len)  # equal lengths see everything
        logits = self._forward(batch.next_tok[:, None], pos, cache, 0, kv_len, mask)[:, 0]
        tok = sample(logits, batch.rp, batch.steps)
        batch.pos += 1
        batch.steps += 1
        batch.next_tok = tok
        self._accept(batch, 0, tok, logits, cache)

    # --- bookkeeping of sampled tokens ------------------------------------------------------
    def _accept(self, batch: _Batch, r0: int, tok: torch.Tensor, logits: torch.Tensor,
                cache: KVCache) -> None:
        """Record tokens sampled for rows r0.., finish rows that are done, free their rows."""
        rows = batch.rows[r0:r0 + len(tok)]
        want_lp = [r.req.params.logprobs or r.req.params.top_logprobs > 0 for r in rows]
        toks = tok.tolist()
        lp_list = top_list = None
        if any(want_lp):
            lp = torch.log_softmax(logits, dim=-1)
            lp_list = lp.gather(1, tok[:, None])[:, 0].tolist()
            k = max(r.req.params.top_logprobs for r in rows)
            if k:
                tv, ti = lp.topk(k, dim=-1)
                top_list = (tv.tolist(), ti.tolist())
        done: dict[int, str] = {}
        check = []
        for i, (row, t) in enumerate(zip(rows, toks)):
            row.gen.append(t)
            if want_lp[i]:
                row.logprobs.append(lp_list[i])
                k = row.req.params.top_logprobs
                if k:
                    row.top.append({self._piece(x): v for v, x in zip(top_list[0][i][:k], top_list[1][i][:k])})
            if t in self.eos:
                done[r0 + i] = "stop"
            elif row.req.stops:
                check.append(i)
            elif len(row.gen) >= row.req.max_new:
                done[r0 + i] = "length"
        if check:
            for i in self._stop_hits([rows[i] for i in check]):
                done[r0 + check[i]] = "stop"
            for i in check:
                if r0 + i not in done and len(rows[i].gen) >= rows[i].req.max_new:
                    done[r0 + i] = "length"
        if not done:
            return
        for idx, reason in done.items():
            self._finish(batch.rows[idx], idx, reason, cache)
        batch.remove(set(done), cache)

    def _stop_hits(self, rows: list[_Row]) -> list[int]:
        """Indices of rows whose newest token completes a stop string (only the tail is decoded)."""
        ctxs, fulls = [], []
        for row in rows:
            w = tail_window(row.req.stops)
            seq = row.req.ids + row.gen
            tail = row.gen[-w:]
            ctx = seq[max(0, len(seq) - len(tail) - 4):len(seq) - len(tail)]
            ctxs.append(ctx)
            fulls.append(ctx + tail)
        dec = self.tokenizer.decode_batch(ctxs + fulls, skip_special_tokens=True)
        hits = []
        for i, row in enumerate(rows):
            before, full = dec[i], dec[len(rows) + i]
            text = full[len(before):] if full.startswith(before) else full
            if any(s in text for s in row.req.stops):
                hits.append(i)
        return hits

    def _finish(self, row: _Row, idx: int, reason: str, cache: KVCache) -> None:
        req, gen = row.req, row.gen
        computed = row.length - 1  # the last sampled token was never fed to the model
        self.prefix.insert(req.ids + gen[:-1], cache.read(idx, 0, computed))
        req.usage.completion_tokens += len(gen)
        req.usage.flops += self.shape.span_flops(len(req.ids), len(gen))
        ids = gen[:-1] if gen[-1] in self.eos else gen
        text, keep, _ = finish_text(self.detokenize, req.ids, ids, req.stops)
        p = req.params
        req.completions[row.j] = Completion(
            text=text, token_ids=ids[:keep], finish_reason=reason,
            logprobs=row.logprobs[:keep] if (p.logprobs or p.top_logprobs) else None,
            top_logprobs=row.top[:keep] if p.top_logprobs else None)

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return self._pieces[token]

    def stats(self) -> dict[str, int]:
        """Memory of the KV cache and the prefix cache, in bytes, and prefix-cache occupancy."""
        return {"kv_cache_bytes": self.cache.nbytes if self.cache else 0,
                "prefix_cache_bytes": self.prefix.nbytes, "prefix_cache_tokens": len(self.prefix),
                "prefix_cache_capacity_tokens": self.prefix.capacity,
                "peak_kv_bytes": self.peak_kv_bytes}

