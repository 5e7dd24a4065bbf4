"""The step scheduler's state: handles that callers hold, requests waiting, rows being decoded.

Threads: any thread may `TorchEngine.submit` a request and read or cancel the handle it gets.
Steps (`step`, and so `generate` and `run_loop`) take the engine's step lock, one at a time: a
server runs one `run_loop` thread and submits from its request threads; a `generate` call from
another thread meanwhile steps the same batch. A handle is written only inside a step; its
readers see tokens appear (`poll`) and the final result (`wait`, `result`) without a lock.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ttscale.engine.sampling import RowParams
from ttscale.types import Completion, GenerationRequest, GenerationResult, SamplingParams, Usage


@dataclass
class Sampled:
    """Tokens of sample `j` sampled since a handle's previous poll; `logprobs` (of each token)
    and `top_logprobs` (token text -> logprob, per position) when the request asked for them."""

    j: int
    ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None


class RequestHandle:
    """A submitted request: its tokens as they are sampled and, once every sample ends, its result.

    `poll()` returns the tokens sampled since the previous poll as (sample index, token ids)
    pairs: raw tokens, EOS included; the final `Completion`s are authoritative (their text ends
    before a stop string, and EOS is dropped). `poll_tokens()` is the same with each token's
    logprob and top alternatives when the request asked for them (the values its Completion
    will carry). One consumer per handle polls, with one of the two.
    """

    def __init__(self, request: GenerationRequest):
        self.request = request
        self._done = threading.Event()
        self._updated = threading.Event()
        self._result: GenerationResult | None = None
        self._req: _Request | None = None
        self._sent: list[int] = []
        self._cancelled = False
        self._on_cancel: Callable[[], None] | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def result(self) -> GenerationResult | None:
        """The GenerationResult once done (an error of its own if it failed), else None."""
        return self._result

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        """Block until done (or timeout) and return the result (None on timeout)."""
        self._done.wait(timeout)
        return self._result

    def wait_update(self, timeout: float | None = None) -> bool:
        """Block until new tokens were sampled or the request ended; False on timeout."""
        got = self._updated.wait(timeout)
        self._updated.clear()
        return got or self.done

    @property
    def prompt_ids(self) -> list[int]:
        """The prompt's token ids (empty for a request refused at submit)."""
        return self._req.ids if self._req is not None else []

    def poll(self) -> list[tuple[int, list[int]]]:
        """Tokens sampled since the last poll, per sample: [(j, [token ids])]."""
        return [(t.j, t.ids) for t in self.poll_tokens()]

    def poll_tokens(self) -> list[Sampled]:
        """Tokens sampled since the last poll, per sample, with their logprobs when asked."""
        req = self._req
        if req is None:
            return []
        p = req.params
        want_lp, want_top = bool(p.logprobs or p.top_logprobs), p.top_logprobs > 0
        streams, lps, tops = req.streams, req.lp_streams, req.top_streams
        if len(self._sent) < len(streams):
            self._sent += [0] * (len(streams) - len(self._sent))
        out = []
        for j, s in enumerate(streams):
            # the driving thread appends a token, then its logprob, then its alternatives:
            # only tokens with all three recorded are handed out
            k = len(s)
            if want_lp:
                k = min(k, len(lps[j]))
            if want_top:
                k = min(k, len(tops[j]))
            a = self._sent[j]
            if k > a:
                out.append(Sampled(j, s[a:k], lps[j][a:k] if want_lp else None,
                                   tops[j][a:k] if want_top else None))
                self._sent[j] = k
        return out

    def cancel(self) -> None:
        """Stop the request at the next step; its result becomes an error 'cancelled'."""
        if not self.done:
            self._cancelled = True
            if self._on_cancel:
                self._on_cancel()

    def _finish(self, result: GenerationResult) -> None:
        self._result = result
        self._done.set()
        self._updated.set()


@dataclass(eq=False)
class _Request:
    handle: RequestHandle
    ids: list[int]
    params: SamplingParams
    stops: list[str]
    max_new: int
    keys: list[int]  # the sampling stream of each sample (see sampling.sample_key)
    next_j: int = 0  # the next sample to admit for the first time
    requeued: list[int] = field(default_factory=list)  # preempted samples, admitted first
    alone: bool = False  # run without other requests (after a batch failed)
    first_logits: torch.Tensor | None = None  # the prompt's last logits (restarts skip prefill)
    completions: list[Completion | None] = field(default_factory=list)
    streams: list[list[int]] = field(default_factory=list)  # tokens of each sample so far
    lp_streams: list[list[float]] = field(default_factory=list)  # and their logprobs (if asked)
    top_streams: list[list[dict[str, float]]] = field(default_factory=list)  # alternatives
    usage: Usage = field(default_factory=Usage)
    remaining: int = 0

    def reset(self) -> None:
        """Back to not started (a restart regenerates the same samples: keys are fixed)."""
        n = self.params.n
        self.next_j, self.remaining, self.usage = 0, n, Usage()
        self.requeued, self.first_logits = [], None
        self.completions = [None] * n
        self.streams = [[] for _ in range(n)]
        self.lp_streams = [[] for _ in range(n)]
        self.top_streams = [[] for _ in range(n)]

    @property
    def waiting(self) -> int:
        """Samples not running: preempted ones and those never admitted."""
        return len(self.requeued) + self.params.n - self.next_j

    def pop(self, k: int) -> list[int]:
        """The next k samples to admit: preempted ones first, in sample order."""
        js = self.requeued[:k]
        del self.requeued[:k]
        fresh = k - len(js)
        js += range(self.next_j, self.next_j + fresh)
        self.next_j += fresh
        return js

    def requeue(self, j: int) -> None:
        """Sample j was preempted: it waits to be admitted again."""
        self.requeued.append(j)
        self.requeued.sort()

    @property
    def span(self) -> int:
        """Most positions the request's sequences can reach."""
        return len(self.ids) + self.max_new


@dataclass(eq=False)
class _Row:
    """A sample being decoded. `blocks`: its block table (ids in the paged pool). A sample
    restarted after preemption regenerates its tokens in lists of its own while `replay` (the
    tokens it streamed before) is longer; those tokens are forced, then the row takes over
    the request's stream lists again, so no token is handed out twice or changed."""

    req: _Request
    j: int
    key: int = 0
    gen: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[str, float]] = field(default_factory=list)
    lookup: object = None  # the prompt-lookup index of speculative decoding
    blocks: list[int] = field(default_factory=list)
    born: int = 0  # admission order: the largest is the youngest (preempted first)
    replay: list[int] | None = None

    @classmethod
    def of(cls, req: _Request, j: int, born: int) -> "_Row":
        if req.streams[j]:  # a restart: regenerate (forced) into lists of its own
            return cls(req, j, req.keys[j], born=born, replay=req.streams[j])
        return cls(req, j, req.keys[j], req.streams[j], req.lp_streams[j], req.top_streams[j],
                   born=born)

    def forced(self) -> int | None:
        """The token this row must sample next while it replays (None: sample freely)."""
        if self.replay is not None and len(self.gen) < len(self.replay):
            return self.replay[len(self.gen)]
        return None

    def caught_up(self) -> None:
        """After appending a token: once the replay is done, continue in the request's streams."""
        if self.replay is not None and len(self.gen) >= len(self.replay):
            r, j = self.req, self.j
            self.gen, self.logprobs, self.top = r.streams[j], r.lp_streams[j], r.top_streams[j]
            self.replay = None

    @property
    def length(self) -> int:
        """Tokens of the sequence so far (prompt and generated)."""
        return len(self.req.ids) + len(self.gen)


class _Batch:
    """The rows being decoded; row i uses block-table row i, its settings in tensors of length A."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[_Row] = []
        self.next_tok = torch.zeros(0, dtype=torch.long, device=device)
        self.pos = torch.zeros(0, dtype=torch.long, device=device)
        self.steps = torch.zeros(0, dtype=torch.long, device=device)
        self.keys: list[int] = []
        self.rp = self._params()

    def _params(self) -> RowParams:
        return RowParams.of([r.req.params for r in self.rows], self.keys, self.device)

    def add(self, rows: list[_Row], first: torch.Tensor) -> None:
        dev = self.device
        self.rows += rows
        self.keys += [r.key for r in rows]
        self.next_tok = torch.cat([self.next_tok, first])
        self.pos = torch.cat([self.pos, torch.tensor([len(r.req.ids) for r in rows], device=dev)])
        self.steps = torch.cat([self.steps, torch.ones(len(rows), dtype=torch.long, device=dev)])
        self.rp = self._params()

    def remove(self, done: set[int], move: Callable[[list[int], list[int]], None]) -> None:
        """Drop rows `done`; the last live rows move into the holes (`move(src, dst)` moves their
        block-table rows: no KV is copied)."""
        a, keep = len(self.rows), len(self.rows) - len(done)
        holes = [i for i in sorted(done) if i < keep]
        sources = [i for i in range(keep, a) if i not in done]
        perm = list(range(keep))
        for h, s in zip(holes, sources):
            perm[h] = s
        if sources:
            move(sources, holes)
        idx = torch.tensor(perm, dtype=torch.long, device=self.device)
        self.rows = [self.rows[i] for i in perm]
        self.keys = [self.keys[i] for i in perm]
        self.next_tok, self.pos, self.steps = self.next_tok[idx], self.pos[idx], self.steps[idx]
        self.rp = self._params()
