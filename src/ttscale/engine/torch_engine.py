"""The project's own generation engine: plain PyTorch, batched, with automatic prefix caching.

A step scheduler runs it (continuous batching across calls): `submit` queues a request and
returns a `RequestHandle`; each `step` admits waiting requests into free rows, then decodes
one token for every running row; `generate` submits a list and steps until all are done.
  1. admit requests while cache rows are free: look up each prompt's longest cached prefix,
     copy it in, prefill only the new tokens (prompts of similar length batched together, one
     prefill per prompt however large n is), then clone the prompt's KV rows for its n samples;
  2. decode all rows together, one token per row per step, each row at its own position;
  3. a row that ends (EOS, stop string, max_tokens, context) stores its computed tokens in the
     prefix cache, frees its row (the last row moves into the hole) and admission resumes.
Threads: see `engine.scheduler` (submit and handles from any thread, one driving thread).
"""
from __future__ import annotations

from collections import deque
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from ttscale.engine.flops import ModelShape
from ttscale.engine.kv_cache import KVCache
from ttscale.engine.loader import load_model
from ttscale.engine.prefix_cache import PrefixCache
from ttscale.engine.sampling import RowParams, check_params, normalize_stop, sample, sample_key
from ttscale.engine.scheduler import RequestHandle, _Batch, _Request, _Row
from ttscale.engine.sparse import (BlockSummaries, SparseAttention, SparseCounters, parse_sparse,
                                   plan_step)
from ttscale.engine.speculative import (NGRAM, SALT_DRAFT, NgramIndex, SpecConfig, accept, draw,
                                        parse_spec, target_probs)
from ttscale.engine.stops import finish_text, tail_window
from ttscale.errors import TTScaleError, unknown
from ttscale.types import Completion, GenerationRequest, GenerationResult, Usage


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


class TorchEngine:
    """A `Generator` over a Llama/Qwen2/Mistral checkpoint directory (Hugging Face format).

    max_batch_size: most sequences decoded at once (cache rows); more samples wait their turn.
    max_seq_len: cap on the context (default: the model's max_position_embeddings).
    prefix_cache_bytes: memory bound of the prefix cache (0 switches prefix caching off).
    prefill_tokens: padded tokens per prefill forward when batching prompts together.
    compile: run the forward through torch.compile.
    speculative: {"draft": "ngram" or a smaller model sharing the tokenizer, "k": tokens drafted
    per round} (see `engine.speculative`); None decodes one token per step.
    kv_memory: bytes the decoding KV cache (the draft's and the block summaries of sparse
    attention included) may take; None: as needed.
    sparse_attention: "block=16,sink=1,window=4,topk=4" (or a dict / `SparseAttention`): each
    decode step attends to the sink blocks, the window blocks and the topk blocks of largest
    Quest bound only (see `engine.sparse`); None: dense. Not with `speculative`.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32", *,
                 max_batch_size: int = 256, max_seq_len: int | None = None,
                 prefix_cache_bytes: int = 256 * 2**20, prefill_tokens: int = 4096,
                 compile: bool = False, model_name: str | None = None,
                 speculative: dict | SpecConfig | None = None, kv_memory: int | None = None,
                 sparse_attention: str | dict | SparseAttention | None = None):
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
        self.spec = parse_spec(speculative)
        self.sparse = parse_sparse(sparse_attention)
        if self.sparse and self.spec:
            raise TTScaleError("sparse_attention and speculative cannot be combined (a verifying "
                               "forward has several tokens per row); accepted: one of them")
        if self.sparse and self.cfg.sliding_window:
            raise TTScaleError(f"sparse_attention on a model with a sliding window "
                               f"({self.cfg.sliding_window}) is not supported; accepted: a model "
                               "with full attention (Llama, Qwen2, Gemma 3)")
        self._summ: BlockSummaries | None = None  # the sparse path's block summaries
        self.sparse_counters = SparseCounters()  # what decode steps read (`stats`)
        self.model.setup_rope(self.context_length + 1)
        self.spec_drafted = self.spec_accepted = 0  # draft tokens proposed and kept
        self.draft, self.draft_cache = None, None
        if self.spec and self.spec.draft != NGRAM:
            self.draft = self._load_draft(self.spec.draft, dtype)
        self.kv_token_bytes = self._token_bytes(self.cfg, self.model)
        if self.draft is not None:
            self.kv_token_bytes += self._token_bytes(self.draft.config, self.draft.model)
        if self.sparse:  # a min and a max key per block: 1/block of the keys and values
            self.kv_token_bytes += -(-self.kv_token_bytes // self.sparse.block)
        self.kv_memory = kv_memory
        if kv_memory is not None:
            need = (self.context_length + 1) * self.kv_token_bytes
            if isinstance(kv_memory, bool) or not isinstance(kv_memory, int) or kv_memory < need:
                raise TTScaleError(
                    f"kv_memory={kv_memory!r} is too small; accepted: at least {need} bytes "
                    f"({need / 2**20:.1f} MiB: one sequence of the model's context, "
                    f"{self.context_length} tokens, at {self.kv_token_bytes} bytes a token)")
        self.shape = ModelShape(self.model.n_params(), self.cfg.n_layer, self.cfg.d_model)
        self.max_batch_size, self.prefill_tokens = max_batch_size, prefill_tokens
        dt = self.model.embed.weight.dtype
        self.prefix = PrefixCache(self.cfg.n_layer, self.cfg.n_kv_head, self.cfg.head_dim, dt,
                                  self.device, prefix_cache_bytes)
        self.cache: KVCache | None = None
        self.peak_kv_bytes = 0  # decoding KV and prefix cache
        self.peak_decode_kv_bytes = 0  # decoding KV (what kv_memory bounds)
        self._forward = torch.compile(self.model.forward, dynamic=True) if compile else self.model.forward
        self._pieces: dict[int, str] = {}
        # the step scheduler: submitted requests wait in the inbox (filled from any thread),
        # then in `_pending` (driving thread only) until admitted into `_batch`
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()
        self._inbox: list[_Request] = []
        self._cancels = 0
        self._pending: deque[_Request] = deque()
        self._batch = _Batch(self.device)
        self._admitting: list[_Request] = []

    # --- the Generator protocol -------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model's tokenizer makes them (with BOS where its post-processor adds one)."""
        return self.tokenizer.encode(text).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Submit every request and step until all are done (a thin loop over the scheduler)."""
        handles = [self.submit(r) for r in requests]
        for h in handles:
            while not h.done:
                if not self.step():
                    h.wait(0.01)  # another thread is finishing it
        return [h.result for h in handles]

    # --- the step scheduler -----------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request (thread-safe); it joins the running batch at a coming step.

        A request that fails validation comes back as a handle that is already done, its
        result carrying the error.
        """
        handle = RequestHandle(request)
        try:
            req = self._prepare(handle, request)
        except TTScaleError as e:
            handle._finish(GenerationResult([], Usage(), error=str(e)))
            return handle
        handle._req, handle._on_cancel = req, self._note_cancel
        with self._cond:
            self._inbox.append(req)
            self._cond.notify_all()
        return handle

    def has_work(self) -> bool:
        """Whether requests are running or waiting."""
        return bool(self._inbox or self._pending or self._batch.rows)

    def step(self) -> bool:
        """One scheduling step: admit waiting requests into free rows, then decode one token
        for every running row. Returns `has_work()`. Steps are serialised by a lock, so several
        threads may drive (`generate` while `run_loop` runs) without corrupting the batch.

        An exception inside a step fails no request at once: the requests involved restart
        one at a time, and only one that fails alone gets the error as its result.
        """
        with self._step_lock, torch.inference_mode():
            return self._step()

    def _step(self) -> bool:
        with self._cond:
            if self._inbox:
                self._pending.extend(self._inbox)
                self._inbox.clear()
            cancels, self._cancels = self._cancels, 0
        if cancels:
            self._drop_cancelled()
        try:
            if self._pending and len(self._batch.rows) < self.max_batch_size:
                self._admit()
            if self._batch.rows:
                self._spec_step() if self.spec else self._decode_step()
        except Exception as e:  # noqa: BLE001 - a bad request must fail by itself
            self._recover(e)
        return self.has_work()

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until a request is submitted (or timeout); True if there is work."""
        with self._cond:
            if not self.has_work():
                self._cond.wait(timeout)
        return self.has_work()

    def run_loop(self, stop: threading.Event, idle_wait: float = 0.05) -> None:
        """Drive the engine until `stop` is set: step while there is work, else wait for some."""
        while not stop.is_set():
            if not self.step():
                self.wait_for_work(idle_wait)

    def _note_cancel(self) -> None:
        with self._cond:
            self._cancels += 1
            self._cond.notify_all()

    def _drop_cancelled(self) -> None:
        gone = GenerationResult([], Usage(), error="cancelled")
        for req in [r for r in self._pending if r.handle.cancelled]:
            self._pending.remove(req)
            req.handle._finish(gone)
        rows = {i for i, r in enumerate(self._batch.rows) if r.req.handle.cancelled}
        if rows:
            for req in {id(self._batch.rows[i].req): self._batch.rows[i].req for i in rows}.values():
                req.handle._finish(gone)
            self._batch.remove(rows, self._move_rows)

    def _recover(self, err: Exception) -> None:
        involved = {id(r.req): r.req for r in self._batch.rows}
        involved.update({id(r): r for r in self._admitting})
        self._batch, self._admitting = _Batch(self.device), []
        reqs = list(involved.values())
        for req in reqs:
            if req in self._pending:
                self._pending.remove(req)
        if len(reqs) <= 1:
            for req in reqs:
                req.handle._finish(GenerationResult([], Usage(), error=f"{type(err).__name__}: {err}"))
            return
        for req in reversed(reqs):
            req.reset()
            req.alone = True
            self._pending.appendleft(req)

    @staticmethod
    def _token_bytes(cfg, model) -> int:
        """KV bytes of one position (scratch included in a row's length + 1)."""
        return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * model.embed.weight.element_size()

    def _load_draft(self, name: str, dtype: str):
        from ttscale.models.registry import resolve_model

        d = load_model(resolve_model(name), self.device, dtype)
        if d.config.vocab_size != self.cfg.vocab_size or d.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise TTScaleError(f"speculative draft {name!r} does not share the model's tokenizer; "
                               "accepted: a model of the same family, or \"ngram\"")
        d.model.setup_rope(self.context_length + 1)
        return d

    # --- preparation ------------------------------------------------------------------------
    def _prepare(self, handle: RequestHandle, r: GenerationRequest) -> _Request:
        if not isinstance(r, GenerationRequest):
            raise TTScaleError(f"a request must be a GenerationRequest, got {type(r).__name__}")
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
        p = r.params
        req = _Request(handle, ids, p, normalize_stop(p.stop), max_new,
                       [sample_key(p.seed, j) for j in range(p.n)])
        req.reset()
        return req

    def _ensure_cache(self, rows: int, length: int) -> KVCache:
        """The KV cache, grown (contents kept) to at least `rows` x `length`."""
        c = self.cache
        if c is None or c.rows < rows or c.length < length:
            rows, length = max(rows, c.rows if c else 0), max(length, c.length if c else 0)
            self._summ = None  # the block summaries of sparse attention follow the new cache
            cfg = self.cfg
            new = KVCache(cfg.n_layer, rows, cfg.n_kv_head, length, cfg.head_dim,
                          self.model.embed.weight.dtype, self.device)
            if c is not None and self._batch.rows:
                n = len(self._batch.rows)
                new.kv[:, :, :n, :, :c.length] = c.kv[:, :, :n, :, :c.length]
            self.cache = None
            self.cache = new
            if self.draft is not None:
                dc, dcfg = self.draft_cache, self.draft.config
                new = KVCache(dcfg.n_layer, rows, dcfg.n_kv_head, length, dcfg.head_dim,
                              self.draft.model.embed.weight.dtype, self.device)
                if dc is not None and self._batch.rows:
                    n = len(self._batch.rows)
                    new.kv[:, :, :n, :, :dc.length] = dc.kv[:, :, :n, :, :dc.length]
                self.draft_cache = None
                self.draft_cache = new
        decode = self.cache.nbytes + (self.draft_cache.nbytes if self.draft_cache is not None else 0)
        self.peak_decode_kv_bytes = max(self.peak_decode_kv_bytes, decode)
        self.peak_kv_bytes = max(self.peak_kv_bytes, decode + self.prefix.nbytes)
        return self.cache

    def _bounded_cache(self, rows_wanted: int, span: int) -> KVCache:
        """Under `kv_memory`: while rows run, the cache stays as it is (requests longer than it
        wait); once idle, it is reallocated as rows x span within the bound (old one freed first)."""
        c = self.cache
        if self._batch.rows and c is not None:
            return c
        rows = min(self.max_batch_size, rows_wanted, self.kv_memory // ((span + 1) * self.kv_token_bytes))
        if c is None or c.length < span or c.rows < rows:
            self.cache = self.draft_cache = None
            self._ensure_cache(rows, span)
        return self.cache

    # --- admission and decoding -------------------------------------------------------------
    def _mask(self, pos: torch.Tensor, kv_len: int, window: int | None | bool = False) -> torch.Tensor:
        """[B, 1, M, kv_len]: a query at position p sees positions <= p (within the window:
        the model's unless given)."""
        window = self.cfg.sliding_window if window is False else window
        keys = torch.arange(kv_len, device=self.device)
        mask = keys[None, None, :] <= pos[:, :, None]
        if window:
            mask &= keys[None, None, :] > pos[:, :, None] - window
            mask |= (pos >= kv_len)[:, :, None]  # padding: any non-empty row will do
        return mask.unsqueeze(1)

    def _take(self, rows: int, length: int) -> list[tuple[_Request, int, int]]:
        """(request, first sample, samples) chunks that fit the free rows of a cache of `rows`
        rows x `length` positions, in arrival order."""
        batch, pending = self._batch, self._pending
        free, chunks = rows - len(batch.rows), []
        running = {id(r.req): r.req for r in batch.rows}
        alone = [r for r in running.values() if r.alone]
        while pending and free > 0:
            req = pending[0]
            if (alone and req is not alone[0]) or (req.alone and (chunks or (running and id(req) not in running))):
                break
            if req.span > length:  # waits until the running rows are done (bounded memory)
                break
            take = min(req.params.n - req.next_j, free)
            chunks.append((req, req.next_j, take))
            req.next_j += take
            free -= take
            if req.next_j == req.params.n:
                pending.popleft()
            if req.alone:
                break
        return chunks

    def _admit(self) -> None:
        batch = self._batch
        rows_wanted = len(batch.rows) + sum(r.params.n - r.next_j for r in self._pending)
        span = max([r.span for r in self._pending] + [r.req.span for r in batch.rows])
        if self.kv_memory is None:
            cache = self._ensure_cache(min(self.max_batch_size, rows_wanted), span)
            rows = self.max_batch_size
        else:
            cache = self._bounded_cache(rows_wanted, span)
            rows = cache.rows
        chunks = self._take(rows, cache.length)
        if not chunks:
            return
        self._admitting = [c[0] for c in chunks]
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
            new_rows.append(_Row(req, j0, req.keys[j0], req.streams[j0], req.lp_streams[j0],
                                 req.top_streams[j0]))
            source_of.append(rank)
        for rank, c in enumerate(order):
            req, j0, take = chunks[c]
            for j in range(j0 + 1, j0 + take):
                src.append(a0 + rank)
                dst.append(a0 + len(new_rows))
                new_rows.append(_Row(req, j, req.keys[j], req.streams[j], req.lp_streams[j],
                                     req.top_streams[j]))
                source_of.append(rank)
        if self.draft is not None:  # the draft computes whole prompts (no prefix cache)
            self._prefill([(chunks[c][0].ids, 0) for c in order], a0, self.draft_cache,
                          self.draft.model.forward, self.draft.config.sliding_window)
        self._move_rows(src, dst, max(len(r.req.ids) for r in new_rows))
        for rank, c in enumerate(order):
            req = chunks[c][0]
            self.prefix.insert(req.ids, cache.read(a0 + rank, 0, len(req.ids)))
        row_logits = logits[torch.tensor(source_of, device=self.device)]
        rp = RowParams.of([r.req.params for r in new_rows], [r.key for r in new_rows], self.device)
        first = sample(row_logits, rp, torch.zeros(len(new_rows), dtype=torch.long, device=self.device))
        batch.add(new_rows, first)
        if self._summ is not None:
            self._summ.reset(a0, a0 + len(new_rows))
        self._admitting = []
        self._accept(a0, first, row_logits)
        self.peak_kv_bytes = max(self.peak_kv_bytes, cache.nbytes + self.prefix.nbytes)

    def _prefill(self, items: list[tuple[list[int], int]], row0: int, cache: KVCache,
                 forward=None, window: int | None | bool = False) -> torch.Tensor:
        """Compute tokens ids[h:] of each (ids, h) into rows row0.., in groups; last logits [k, V]."""
        forward = forward or self._forward
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
            out.append(forward(toks, pos, cache, row0 + i, kv_len, self._mask(pos, kv_len, window),
                               torch.tensor(last, device=self.device)))
            i = j
        return torch.cat(out)

    def _decode_step(self) -> None:
        batch, cache = self._batch, self.cache
        lengths = [r.length for r in batch.rows]
        kv_len = max(lengths)
        pos = batch.pos[:, None]
        window = self.cfg.sliding_window
        uniform = min(lengths) == kv_len and not (window and kv_len > window)
        mask = None if uniform else self._mask(pos, kv_len)  # equal lengths see everything
        sparse = self._sparse_step(lengths) if self.sparse else None
        kw = {} if sparse is None else {"sparse": sparse}
        logits = self._forward(batch.next_tok[:, None], pos, cache, 0, kv_len, mask, **kw)[:, 0]
        tok = sample(logits, batch.rp, batch.steps)
        batch.pos += 1
        batch.steps += 1
        batch.next_tok = tok
        self._accept(0, tok, logits)

    def _sparse_step(self, lengths: list[int]):
        """The step's block selection (None: every row is short, the step is dense)."""
        if self._summ is None or self._summ.cache is not self.cache:  # a new cache: start afresh
            self._summ = None
            self._summ = BlockSummaries(self.cache, self.sparse.block)
            decode = self.cache.nbytes + self._summ.nbytes
            self.peak_decode_kv_bytes = max(self.peak_decode_kv_bytes, decode)
            self.peak_kv_bytes = max(self.peak_kv_bytes, decode + self.prefix.nbytes)
        return plan_step(self.sparse, self._summ, lengths, self.sparse_counters)

    def _move_rows(self, src: list[int], dst: list[int], length: int) -> None:
        """Copy the KV of rows `src` onto rows `dst` (the draft's too)."""
        self.cache.copy_rows(src, dst, length)
        if self._summ is not None:
            self._summ.move(src, dst)
        if self.draft_cache is not None:
            self.draft_cache.copy_rows(src, dst, length)

    def _spec_step(self) -> None:
        """One speculative round: draft up to k tokens per row, verify them in one forward."""
        batch, dev = self._batch, self.device
        rows = batch.rows
        room = [max(0, min(self.spec.k, r.req.max_new - len(r.gen) - 1)) for r in rows]
        q = None
        if self.draft is None:
            props = []
            for r, m in zip(rows, room):
                if r.lookup is None:
                    r.lookup = NgramIndex(self.spec.ngram)
                props.append(r.lookup.propose(r.req.ids + r.gen, m) if m else [])
            kk = max(len(p) for p in props)
            if kk == 0:
                return self._decode_step()
            drafts = torch.tensor([p + [0] * (kk - len(p)) for p in props], device=dev)
            dlen_list = [len(p) for p in props]
        else:
            kk = max(room)
            if kk == 0:
                return self._decode_step()
            drafts, q = self._draft(kk)
            dlen_list = room
        dlen = torch.tensor(dlen_list, device=dev)
        toks = torch.cat([batch.next_tok[:, None], drafts], 1)
        pos = batch.pos[:, None] + torch.arange(kk + 1, device=dev)
        kv_len = max(r.length for r in rows) + kk
        logits = self._forward(toks, pos, self.cache, 0, kv_len, self._mask(pos, kv_len))
        kept, out = accept(logits, drafts, dlen, q, batch.rp, batch.steps)
        kept_list = kept.tolist()
        self.spec_drafted += sum(dlen_list)
        self.spec_accepted += sum(kept_list)
        self._accept_spec(kept_list, out, logits)

    def _draft(self, kk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """kk tokens per row from the draft model ([A, kk]) and the distributions drawn from."""
        batch, d, dc = self._batch, self.draft, self.draft_cache
        rows, window = batch.rows, self.draft.config.sliding_window
        prev = torch.tensor([r.gen[-2] if len(r.gen) > 1 else r.req.ids[-1] for r in rows],
                            device=self.device)
        pos = torch.stack([batch.pos - 1, batch.pos], 1)  # the token before may be missing
        kv_len = max(r.length for r in rows)
        logits = d.model.forward(torch.stack([prev, batch.next_tok], 1), pos, dc, 0, kv_len,
                                 self._mask(pos, kv_len, window),
                                 torch.ones(len(rows), dtype=torch.long, device=self.device))
        rp, drafts, qs = batch.rp, [], []
        for i in range(kk):
            if i:
                p1 = (batch.pos + i)[:, None]
                kv_len += 1
                logits = d.model.forward(drafts[-1][:, None], p1, dc, 0, kv_len,
                                         self._mask(p1, kv_len, window))[:, 0]
            if rp.all_greedy:
                drafts.append(logits.argmax(-1))
                continue
            qi = target_probs(logits[:, None], rp)[:, 0]
            tok = draw(qi, rp.keys, batch.steps + i, SALT_DRAFT)
            if rp.any_greedy:
                tok = torch.where(rp.temperature == 0, logits.argmax(-1), tok)
            drafts.append(tok)
            qs.append(qi)
        return torch.stack(drafts, 1), (torch.stack(qs, 1) if qs else None)

    def _accept_spec(self, kept: list[int], out: torch.Tensor, logits: torch.Tensor) -> None:
        """Record each row's tokens out[i, :kept[i] + 1] up to its end; free finished rows."""
        batch = self._batch
        rows = batch.rows
        want_lp = [r.req.params.logprobs or r.req.params.top_logprobs > 0 for r in rows]
        toks = out.tolist()
        lp_sel = top = None
        if any(want_lp):
            lp = torch.log_softmax(logits, dim=-1)
            lp_sel = lp.gather(2, out[:, :, None])[:, :, 0].tolist()
            kt = max(r.req.params.top_logprobs for r in rows)
            if kt:
                tv, ti = lp.topk(kt, dim=-1)
                top = (tv.tolist(), ti.tolist())
        done: dict[int, str] = {}
        used, last = [], None
        for i, row in enumerate(rows):
            n = 0
            for m in range(kept[i] + 1):
                t = toks[i][m]
                row.gen.append(t)
                n += 1
                if want_lp[i]:
                    row.logprobs.append(lp_sel[i][m])
                    kt = row.req.params.top_logprobs
                    if kt:
                        row.top.append({self._piece(x): v for v, x in zip(top[0][i][m][:kt], top[1][i][m][:kt])})
                if t in self.eos:
                    done[i] = "stop"
                elif row.req.stops and self._stop_hits([row]):
                    done[i] = "stop"
                elif len(row.gen) >= row.req.max_new:
                    done[i] = "length"
                if i in done:
                    break
            used.append(n)
            if row.req is not last:
                last = row.req
                last.handle._updated.set()
        u = torch.tensor(used, device=self.device)
        batch.pos += u
        batch.steps += u
        batch.next_tok = torch.tensor([r.gen[-1] for r in rows], device=self.device)
        if done:
            for idx, reason in done.items():
                self._finish(rows[idx], idx, reason)
            batch.remove(set(done), self._move_rows)

    # --- bookkeeping of sampled tokens ------------------------------------------------------
    def _accept(self, r0: int, tok: torch.Tensor, logits: torch.Tensor) -> None:
        """Record tokens sampled for rows r0.., finish rows that are done, free their rows."""
        batch = self._batch
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
        last = None
        for i, (row, t) in enumerate(zip(rows, toks)):
            row.gen.append(t)
            if row.req is not last:  # rows of a request are adjacent: one signal per request
                last = row.req
                last.handle._updated.set()
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
            self._finish(batch.rows[idx], idx, reason)
        batch.remove(set(done), self._move_rows)

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

    def _finish(self, row: _Row, idx: int, reason: str) -> None:
        req, gen = row.req, row.gen
        computed = row.length - 1  # the last sampled token was never fed to the model
        self.prefix.insert(req.ids + gen[:-1], self.cache.read(idx, 0, computed))
        req.usage.completion_tokens += len(gen)
        req.usage.flops += self.shape.span_flops(len(req.ids), len(gen))
        ids = gen[:-1] if gen[-1] in self.eos else gen
        text, keep, _ = finish_text(self.detokenize, req.ids, ids, req.stops)
        p = req.params
        req.completions[row.j] = Completion(
            text=text, token_ids=ids[:keep], finish_reason=reason,
            logprobs=row.logprobs[:keep] if (p.logprobs or p.top_logprobs) else None,
            top_logprobs=row.top[:keep] if p.top_logprobs else None)
        req.remaining -= 1
        if req.remaining == 0:
            req.handle._finish(GenerationResult(list(req.completions), req.usage))

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return self._pieces[token]

    def stats(self) -> dict[str, int | float]:
        """Memory of the KV cache and the prefix cache, in bytes, and prefix-cache occupancy;
        under sparse_attention also what decode steps read (`sparse.SparseCounters`)."""
        return {"kv_cache_bytes": self.cache.nbytes if self.cache else 0,
                "prefix_cache_bytes": self.prefix.nbytes, "prefix_cache_tokens": len(self.prefix),
                "prefix_cache_capacity_tokens": self.prefix.capacity,
                "peak_kv_bytes": self.peak_kv_bytes,
                **({"sparse_" + k: v for k, v in self.sparse_counters.as_dict().items()}
                   if self.sparse else {})}

