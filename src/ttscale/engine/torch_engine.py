"""The project's own generation engine: plain PyTorch, batched, paged KV, automatic prefix caching.

A step scheduler runs it (continuous batching across calls): `submit` queues a request and
returns a `RequestHandle`; each `step` admits waiting requests into free rows, then decodes
one token for every running row; `generate` submits a list and steps until all are done.
The KV lives in fixed-size blocks of one pool (`engine.paged`), each sequence with its block
table; `kv_memory` bounds the pool. The prefix cache is blocks of the same pool
(`engine.block_cache`): registered blocks no row refers to stay there until evicted.
  1. admit requests while rows and blocks are free: look up each prompt's longest cached
     prefix, take references on its full blocks (copy the block after them when a cached one
     starts with the next tokens), prefill only the new tokens (prompts of similar length
     batched together, a long prompt in chunks of `prefill_tokens`, one prefill per prompt
     however large n is), register the prompt's full blocks; the n samples share the
     prompt's blocks (reference counts);
  2. decode all rows together, one token per row per step, each row at its own position; a
     row about to write into a shared block copies it first (copy-on-write), and when the pool
     has no block left the youngest rows are preempted: their blocks are freed and they start
     again later (see `_preempt`: outputs are those of an unbounded run);
  3. a row that ends (EOS, stop string, max_tokens, context) registers its blocks (computed
     tokens, the partly filled last block included) in the prefix cache, releases them (the
     last row's table moves into the hole) and admission resumes.
Threads: see `engine.scheduler` (submit and handles from any thread, one driving thread).
"""
from __future__ import annotations

from collections import deque
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from ttscale.engine.block_cache import BlockCache
from ttscale.engine.flops import ModelShape
from ttscale.engine.loader import load_model
from ttscale.engine.paged import SCRATCH, BlockPool, PagedKV, Plane
from ttscale.engine.sampling import RowParams, check_params, normalize_stop, sample, sample_key
from ttscale.engine.scheduler import RequestHandle, _Batch, _Request, _Row
from ttscale.engine.sparse import (BlockSummaries, SparseAttention, SparseCounters, parse_sparse,
                                   plan_step, summary_bytes)
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

    max_batch_size: most sequences decoded at once (rows); more samples wait their turn.
    max_seq_len: cap on the context (default: the model's max_position_embeddings).
    prefix_cache_bytes: most bytes of the KV pool the prefix cache's blocks may hold, in use
    by rows or not (less than one block, 0 say, switches prefix caching off). They live in the
    pool's room: unreferenced ones are evicted when rows need blocks, before the pool grows
    (or, under `kv_memory`, before a row is preempted).
    prefill_tokens: padded tokens per prefill forward when batching prompts together; a longer
    prompt is prefilled in chunks of this many tokens, each attending to the earlier ones.
    compile: run the forward through torch.compile.
    speculative: {"draft": "ngram" or a smaller model sharing the tokenizer, "k": tokens drafted
    per round} (see `engine.speculative`); None decodes one token per step.
    kv_memory: bytes the paged KV pool (the draft's KV and the block summaries of sparse
    attention included) may take; None: as needed. Under the bound no request fails or changes
    its output: rows are preempted and recomputed.
    kv_block: positions per KV block (default 16; under sparse_attention its block).
    sparse_attention: "block=16,sink=1,window=4,topk=4" (or a dict / `SparseAttention`): each
    decode step attends to the sink blocks, the window blocks and the topk blocks of largest
    Quest bound only (see `engine.sparse`); None: dense. Not with `speculative`.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: str = "float32", *,
                 max_batch_size: int = 256, max_seq_len: int | None = None,
                 prefix_cache_bytes: int = 256 * 2**20, prefill_tokens: int = 4096,
                 compile: bool = False, model_name: str | None = None,
                 speculative: dict | SpecConfig | None = None, kv_memory: int | None = None,
                 sparse_attention: str | dict | SparseAttention | None = None,
                 kv_block: int | None = None):
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
        self.draft = self.draft_shape = None
        if self.spec and self.spec.draft != NGRAM:
            self.draft = self._load_draft(self.spec.draft, dtype)
            self.draft_shape = ModelShape(self.draft.model.n_params(), self.draft.config.n_layer,
                                          self.draft.config.d_model)
        self.kv_block = self._check_block(kv_block)
        self._planes = [Plane(self.cfg.n_layer, self.cfg.n_kv_head, self.cfg.head_dim,
                              self.model.embed.weight.dtype)]
        if self.draft is not None:
            d = self.draft.config
            self._planes.append(Plane(d.n_layer, d.n_kv_head, d.head_dim, self.draft.model.embed.weight.dtype))
        token = summary_bytes(self.sparse, self._planes[0]) if self.sparse else 0  # beside each block
        self.block_bytes = sum(p.block_bytes(self.kv_block) for p in self._planes) + token
        self.kv_token_bytes = -(-self.block_bytes // self.kv_block)  # KV bytes of one position
        self.kv_memory = kv_memory
        self.kv_blocks: int | None = None  # the pool's bound in blocks (None: as needed)
        blocks = -(-self.context_length // self.kv_block)
        self.min_kv_memory = need = (blocks + 1) * self.block_bytes  # the least kv_memory accepted
        if kv_memory is not None:
            if isinstance(kv_memory, bool) or not isinstance(kv_memory, int) or kv_memory < need:
                raise TTScaleError(
                    f"kv_memory={kv_memory!r} is too small; accepted: at least {need} bytes "
                    f"({need / 2**20:.1f} MiB: one sequence of the model's context, "
                    f"{self.context_length} tokens in {blocks} blocks of {self.kv_block} positions, "
                    f"and the scratch block, at {self.block_bytes} bytes a block)")
            self.kv_blocks = kv_memory // self.block_bytes - 1  # the scratch block is counted
        self.shape = ModelShape(self.model.n_params(), self.cfg.n_layer, self.cfg.d_model)
        self.max_batch_size, self.prefill_tokens = max_batch_size, prefill_tokens
        self.prefix = BlockCache(self.kv_block, self.block_bytes, self.kv_token_bytes, prefix_cache_bytes)
        self.prefill_computed = 0  # prompt positions the target model computed (cache misses)
        self.pool: BlockPool | None = None  # made at the first admission
        self._width = -(-(self.context_length + 1 + (self.spec.k if self.spec else 0)) // self.kv_block) + 1
        self.tables = torch.full((max_batch_size, self._width), SCRATCH, dtype=torch.long, device=self.device)
        self._views: list[PagedKV] = []  # the pool through `tables`, per model (target, draft)
        self._born = 0  # rows admitted so far (a row's age)
        self.preemptions = 0  # rows preempted because the pool was full
        self._crowded = False  # a row was preempted and none has finished since: admit nobody
        self.peak_kv_bytes = 0  # the pool (prefix cache included) and sparse summaries
        self.peak_decode_kv_bytes = 0  # the same: what kv_memory bounds
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
            for i in rows:
                self._free_row(self._batch.rows[i])
            self._batch.remove(rows, self._move_rows)
            self._crowded = False

    def _recover(self, err: Exception) -> None:
        involved = {id(r.req): r.req for r in self._batch.rows}
        involved.update({id(r): r for r in self._admitting})
        self._batch, self._admitting = _Batch(self.device), []
        self.pool, self._summ, self._views = None, None, []  # no row holds a block: start afresh
        self.prefix.attach(None)  # its blocks went with the pool
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

    def _check_block(self, kv_block: int | None) -> int:
        """Positions per KV block: `kv_block`, else the sparse block, else 16."""
        if kv_block is None:
            return self.sparse.block if self.sparse else 16
        if isinstance(kv_block, bool) or not isinstance(kv_block, int) or kv_block < 1:
            raise TTScaleError(f"kv_block={kv_block!r} is out of range; accepted: an integer >= 1")
        if self.sparse and kv_block != self.sparse.block:
            raise TTScaleError(f"kv_block={kv_block} differs from the sparse_attention block "
                               f"({self.sparse.block}); accepted: {self.sparse.block} (or no kv_block)")
        return kv_block

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

    # --- the paged KV pool ------------------------------------------------------------------
    def _pool(self) -> BlockPool:
        """The pool (made at the first admission, and again after a failed step)."""
        if self.pool is None:
            self.pool = BlockPool(self._planes, self.kv_block, self.device, self.kv_blocks,
                                  self.block_bytes - sum(p.block_bytes(self.kv_block) for p in self._planes),
                                  self.prefix)
            self._views = [PagedKV(self.pool, self.tables, self.context_length, plane)
                           for plane in range(len(self._planes))]
            self._summ = BlockSummaries(self.pool, self.sparse.bits) if self.sparse else None
        return self.pool

    @property
    def cache(self) -> PagedKV | None:
        """The target model's view of the pool (what its forward receives)."""
        return self._views[0] if self._views else None

    def _alloc(self, n: int) -> list[int]:
        """n fresh blocks (PoolFull under the bound when there are not enough)."""
        ids = self.pool.allocate(n)
        if self._summ is not None:
            self._summ.forget(ids)
        self._note_memory()
        return ids

    def _note_memory(self) -> None:
        decode = self.pool.nbytes + (self._summ.nbytes if self._summ is not None else 0)
        self.peak_decode_kv_bytes = max(self.peak_decode_kv_bytes, decode)
        self.peak_kv_bytes = max(self.peak_kv_bytes, decode)

    def _set_tables(self, first: int, rows: list[_Row]) -> None:
        """Write the block tables of rows first.. into `tables` (the rest of each row: scratch)."""
        t = torch.full((len(rows), self._width), SCRATCH, dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, :len(r.blocks)] = torch.tensor(r.blocks, dtype=torch.long)
        self.tables[first:first + len(rows)] = t.to(self.device)

    def _free_row(self, row: _Row) -> None:
        self.pool.release(row.blocks)
        row.blocks = []

    def _move_rows(self, src: list[int], dst: list[int]) -> None:
        """Rows `src` move to rows `dst`: their block tables move (no KV is copied)."""
        s = torch.tensor(src, device=self.device)
        self.tables[torch.tensor(dst, device=self.device)] = self.tables[s]

    def _writable(self, ahead: int, back: int = 0) -> None:
        """Give every row blocks it may write for positions length-1-back .. length-1+ahead:
        new blocks past its table, copies of blocks it shares or the prefix cache holds
        (copy-on-write). When the pool lacks blocks the youngest rows are preempted until the
        rest fit."""
        pool, bs, last = self.pool, self.kv_block, self.context_length - 1
        while True:
            rows = self._batch.rows
            spans = [((r.length - 1 - back) // bs, min(r.length - 1 + ahead, last) // bs) for r in rows]
            new = sum(max(0, c1 + 1 - len(r.blocks)) for r, (_, c1) in zip(rows, spans))
            wanting: dict[int, int] = {}  # shared block -> rows about to write it
            for r, (c0, c1) in zip(rows, spans):
                for b in r.blocks[max(c0, 0):c1 + 1]:
                    if pool.shared(b):
                        wanting[b] = wanting.get(b, 0) + 1
            # the last writer keeps a block unless the prefix cache holds it
            copies = sum(n - (n == pool.refs[b] and b not in self.prefix) for b, n in wanting.items())
            if new + copies <= pool.n_free() or len(rows) <= 1:
                break
            self._preempt(max(range(len(rows)), key=lambda i: rows[i].born))
        changed = []
        for i, (r, (c0, c1)) in enumerate(zip(rows, spans)):
            touched = False
            for c in range(max(c0, 0), min(c1 + 1, len(r.blocks))):
                b = r.blocks[c]
                if pool.shared(b):
                    nb = pool.copy_on_write(b)
                    if self._summ is not None:
                        self._summ.forget([nb])
                    r.blocks[c] = nb
                    touched = True
            if c1 + 1 > len(r.blocks):
                r.blocks += self._alloc(c1 + 1 - len(r.blocks))
                touched = True
            if touched:
                changed.append(i)
        self._note_memory()
        for i in changed:
            self.tables[i, :len(rows[i].blocks)] = torch.tensor(rows[i].blocks, device=self.device)

    def _preempt(self, idx: int) -> None:
        """Stop row idx for now: free its blocks and queue its sample to start again.

        A restarted sample is recomputed from scratch, not by a prefill of its prompt and
        tokens (vLLM's way): it decodes again token by token with its own key and step
        numbers, so its logits are those of the decode path it had (a prefill computes them
        another way, and a float difference could flip a near-tie). While it catches up, its
        tokens are forced to those it streamed before (`_Row.replay`): a handle never sees a
        token twice or changed, and the finished output is that of an unbounded run.
        """
        batch = self._batch
        row = batch.rows[idx]
        self._free_row(row)
        batch.remove({idx}, self._move_rows)
        row.req.requeue(row.j)
        if row.req in self._pending:
            self._pending.remove(row.req)
        self._pending.appendleft(row.req)
        self.preemptions += 1
        self._crowded = True

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

    def _take(self) -> list[tuple[_Request, list[int]]]:
        """(request, samples) chunks that fit the free rows and the free blocks, in arrival
        order: a request's prompt blocks (none when a sample of it runs: they are shared) and
        `RESERVE` blocks per sample for its first writes, after what running rows about to
        start a block need. After a preemption nothing is admitted until a row finishes (else
        the rows admitted would be the next preempted, their work thrown away)."""
        batch, pending, pool, bs = self._batch, self._pending, self.pool, self.kv_block
        free, chunks = self.max_batch_size - len(batch.rows), []
        blocks = pool.n_free() - sum((r.length - 1) % bs == 0 for r in batch.rows)
        running = {id(r.req): r.req for r in batch.rows}
        alone = [r for r in running.values() if r.alone]
        while pending and free > 0 and not (self._crowded and batch.rows):
            req = pending[0]
            if (alone and req is not alone[0]) or (req.alone and (chunks or (running and id(req) not in running))):
                break
            if chunks and chunks[-1][0] is req:  # what was left of it does not fit
                break
            need = 0 if id(req) in running else -(-len(req.ids) // bs)
            take = min(req.waiting, free, (blocks - need) // self.RESERVE)
            if take < 1:
                if batch.rows or chunks:
                    break  # waits for blocks to be freed
                take = 1  # an empty pool holds one sequence of the context (checked at start-up)
            chunks.append((req, req.pop(take)))
            free -= take
            blocks -= need + take * self.RESERVE
            if req.waiting == 0:
                pending.popleft()
            if req.alone:
                break
        return chunks

    RESERVE = 1  # free blocks an admitted sample needs (its first write: a new or copied block)

    def _admit(self) -> None:
        pool, batch, bs = self._pool(), self._batch, self.kv_block
        chunks = self._take()
        if not chunks:
            return
        self._admitting = [c[0] for c in chunks]
        running: dict[int, _Row] = {}
        for r in batch.rows:
            running.setdefault(id(r.req), r)
        # a request with a running sample shares its prompt blocks; the others are prefilled
        fresh = [c for c in range(len(chunks)) if id(chunks[c][0]) not in running]
        hits = {c: self._lookup(chunks[c][0].ids) for c in fresh}  # before any allocation
        fresh.sort(key=lambda c: len(chunks[c][0].ids) - hits[c][2])
        order = fresh + [c for c in range(len(chunks)) if c not in hits]
        a0 = len(batch.rows)
        firsts = []  # the first new row of each chunk, in `order`
        for c in order:
            req, js = chunks[c]
            row = self._new_row(req, js[0])
            src = running.get(id(req))
            if src is None:
                taken, saved, _ = hits[c]
                row.blocks = taken + self._alloc(-(-len(req.ids) // bs) - len(taken))
                if saved is not None:
                    pool.put_blocks(row.blocks[len(taken):len(taken) + saved[0].shape[2]], saved)
            else:
                row.blocks = src.blocks[:-(-len(req.ids) // bs)]
                pool.share(row.blocks)
            firsts.append(row)
        self._set_tables(a0, firsts)
        items = [(chunks[c][0].ids, hits[c][2]) for c in fresh]
        if items:
            self.prefill_computed += sum(len(ids) - h for ids, h in items)
            logits = self._prefill(items, a0, self._views[0])
            if self.draft is not None:  # the draft computes whole prompts (no prefix cache)
                self._prefill([(ids, 0) for ids, _ in items], a0, self._views[1],
                              self.draft.model.forward, self.draft.config.sliding_window)
        for rank, c in enumerate(fresh):
            req, h = chunks[c][0], hits[c][2]
            req.first_logits = logits[rank]
            if not req.usage.prompt_tokens:  # the first admission
                req.usage.prompt_tokens, req.usage.cached_tokens = len(req.ids), h
            req.usage.flops += self.shape.span_flops(h, len(req.ids) - h)
            if self.draft is not None:  # and the draft's whole prompt
                req.usage.flops += self.draft_shape.span_flops(0, len(req.ids))
            # its full blocks (decode writes only past the prompt; the last block waits for finish)
            self.prefix.register(req.ids[:len(req.ids) // bs * bs], firsts[rank].blocks)
        new_rows, source_of = list(firsts), list(range(len(firsts)))
        for rank, c in enumerate(order):  # the other samples share the first one's blocks
            req, js = chunks[c]
            for j in js[1:]:
                row = self._new_row(req, j)
                row.blocks = list(firsts[rank].blocks)
                pool.share(row.blocks)
                new_rows.append(row)
                source_of.append(rank)
        self._set_tables(a0 + len(firsts), new_rows[len(firsts):])
        prompt_logits = torch.stack([chunks[c][0].first_logits for c in order])
        row_logits = prompt_logits[torch.tensor(source_of, device=self.device)]
        rp = RowParams.of([r.req.params for r in new_rows], [r.key for r in new_rows], self.device)
        first = sample(row_logits, rp, torch.zeros(len(new_rows), dtype=torch.long, device=self.device))
        batch.add(new_rows, first)
        self._admitting = []
        self._accept(a0, first, row_logits)
        self._note_memory()

    def _lookup(self, ids: list[int]) -> tuple[list[int], list[torch.Tensor] | None, int]:
        """The prefix cache's hit for prompt `ids` (its last token is always computed):
        (cached full blocks, referenced now for the row; the KV of the blocks to copy into the
        row's next blocks, or None; positions cached). With a draft model every hit is copied:
        the draft prefills whole prompts into blocks of the row's own."""
        if not self.prefix.max_blocks:
            return [], None, 0
        full, part, m = self.prefix.match(ids[:-1])
        h = len(full) * self.kv_block + m
        copy = [part] if part is not None else []
        if self.draft is not None:
            full, copy = [], full + copy
        self.pool.take(full)
        return full, (self.pool.gather_blocks(copy) if copy else None), h

    def _new_row(self, req: _Request, j: int) -> _Row:
        self._born += 1
        return _Row.of(req, j, self._born)

    def _prefill(self, items: list[tuple[list[int], int]], row0: int, cache: PagedKV,
                 forward=None, window: int | None | bool = False) -> torch.Tensor:
        """Compute tokens ids[h:] of each (ids, h) into rows row0.., in groups; last logits [k, V].

        Items come sorted by tokens to compute. One longer than `prefill_tokens` is first
        prefilled alone in chunks of at most that many tokens (each attending to the blocks of
        the earlier ones), leaving `prefill_tokens` for the grouped pass: no mask of a long
        prompt against itself is built at once."""
        forward = forward or self._forward
        items = list(items)
        chunk = self.prefill_tokens
        for i, (ids, h) in enumerate(items):
            while len(ids) - h > chunk:
                end = min(len(ids) - chunk, h + chunk)
                pos = torch.arange(h, end, device=self.device)[None]
                forward(torch.tensor([ids[h:end]], device=self.device), pos, cache, row0 + i, end,
                        self._mask(pos, end, window), torch.tensor([end - h - 1], device=self.device))
                h = end
            items[i] = (ids, h)
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

    def _decode_step(self, writable: bool = True) -> None:
        if writable:
            self._writable(0)
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
        step = plan_step(self.sparse, self._summ, lengths, self.sparse_counters,
                         [r.blocks for r in self._batch.rows], self.tables)
        self._note_memory()  # the summaries grow with the pool
        return step

    def _spec_step(self) -> None:
        """One speculative round: draft up to k tokens per row, verify them in one forward."""
        batch, dev = self._batch, self.device
        room = [max(0, min(self.spec.k, r.req.max_new - len(r.gen) - 1)) for r in batch.rows]
        self._writable(max(room), 1 if self.draft is not None else 0)  # the draft rewrites pos - 1
        rows = batch.rows  # preemption may have removed some
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
                return self._decode_step(writable=False)
            drafts = torch.tensor([p + [0] * (kk - len(p)) for p in props], device=dev)
            dlen_list = [len(p) for p in props]
        else:
            kk = max(room)
            if kk == 0:
                return self._decode_step(writable=False)
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
        self._accept_spec(kept_list, out, logits, kk)

    def _draft(self, kk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """kk tokens per row from the draft model ([A, kk]) and the distributions drawn from."""
        batch, d, dc = self._batch, self.draft, self._views[1]
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

    def _accept_spec(self, kept: list[int], out: torch.Tensor, logits: torch.Tensor, kk: int) -> None:
        """Record each row's tokens out[i, :kept[i] + 1] up to its end; free finished rows.
        kk: the round's draft length (each row verified kk + 1 positions)."""
        batch = self._batch
        rows = batch.rows
        starts = batch.pos.tolist()
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
                forced = row.forced()
                cut = forced is not None and forced != t  # a restarted row replays its stream:
                if cut:  # the tokens after a changed one were verified for another prefix
                    t = forced
                row.gen.append(t)
                n += 1
                if want_lp[i]:
                    row.logprobs.append(lp_sel[i][m])
                    kt = row.req.params.top_logprobs
                    if kt:
                        row.top.append({self._piece(x): v for v, x in zip(top[0][i][m][:kt], top[1][i][m][:kt])})
                row.caught_up()
                if t in self.eos:
                    done[i] = "stop"
                elif row.req.stops and self._stop_hits([row]):
                    done[i] = "stop"
                elif len(row.gen) >= row.req.max_new:
                    done[i] = "length"
                if i in done or cut:
                    break
            used.append(n)
            # What speculation costs beyond the tokens taken (charged at finish): the verified
            # positions thrown away and, with a draft model, its kk + 1 positions of the round.
            row.req.usage.flops += self.shape.span_flops(starts[i] + n, kk + 1 - n)
            if self.draft is not None:
                row.req.usage.flops += self.draft_shape.span_flops(starts[i] - 1, kk + 1)
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
            forced = row.forced()
            if forced is not None and forced != t:  # a restarted row replays what it streamed
                t = forced
                batch.next_tok[r0 + i] = t
            row.gen.append(t)
            if row.req is not last:  # rows of a request are adjacent: one signal per request
                last = row.req
                last.handle._updated.set()
            if want_lp[i]:
                row.logprobs.append(lp_list[i])
                k = row.req.params.top_logprobs
                if k:
                    row.top.append({self._piece(x): v for v, x in zip(top_list[0][i][:k], top_list[1][i][:k])})
            row.caught_up()
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
        self.prefix.register(req.ids + gen[:-1], row.blocks)  # the last token was never fed in
        self._free_row(row)
        self._crowded = False
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
            req.first_logits = None
            req.handle._finish(GenerationResult(list(req.completions), req.usage))

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return self._pieces[token]

    def stats(self) -> dict[str, int | float]:
        """Memory of the KV pool in bytes (the prefix cache's blocks included), its blocks
        (allocated, referenced by rows), preemptions, prompt positions computed by prefill;
        the prefix cache's part of the pool (bytes and positions of its registered blocks,
        referenced or not; the bound in positions; blocks only it keeps; evictions);
        under sparse_attention also what decode steps read (`sparse.SparseCounters`)."""
        pool = self.pool
        return {"kv_cache_bytes": pool.nbytes if pool else 0,
                "kv_blocks": pool.n_blocks if pool else 0, "kv_blocks_used": pool.used if pool else 0,
                "kv_block": self.kv_block, "preemptions": self.preemptions,
                "prefill_tokens_computed": self.prefill_computed,
                "prefix_cache_bytes": self.prefix.nbytes, "prefix_cache_tokens": len(self.prefix),
                "prefix_cache_capacity_tokens": self.prefix.capacity,
                "prefix_cache_blocks": self.prefix.n_blocks,
                "prefix_cache_blocks_idle": pool.idle if pool else 0,
                "prefix_cache_evictions": self.prefix.evictions,
                "peak_kv_bytes": self.peak_kv_bytes,
                **({"sparse_" + k: v for k, v in self.sparse_counters.as_dict().items()}
                   if self.sparse else {})}

