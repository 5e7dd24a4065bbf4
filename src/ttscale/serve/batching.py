"""Sharing one engine among concurrent requests: merged batches and cancellable work.

The embedded engine is not thread-safe and is fastest on big batches, so generate calls from
all running requests (plain sampling and strategy runs alike) are queued and merged into one
engine batch at a time. Each request's work carries a CancelToken: once its client has gone or
its time is up, its queued generation is dropped and its strategy stops at the next call.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ttscale.engine.base import Generator
from ttscale.types import GenerationRequest, GenerationResult, SamplingParams, Usage

if TYPE_CHECKING:
    from ttscale.serve.stepping import Piece


class Cancelled(Exception):
    """The request's work was cancelled (client disconnected or timed out)."""


class CancelToken:
    """Set once, read from any thread."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class _Pending:
    requests: list[GenerationRequest]
    token: CancelToken | None
    done: threading.Event = field(default_factory=threading.Event)
    results: list[GenerationResult] | None = None
    started: bool = False


class ServingWrapper:
    """What the serving generators share: the wrapped generator's identity, tokenizer and any
    other attribute (e.g. vocab_size, for scorers that ask) read through to it."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.shape = inner.shape

    @property
    def context_length(self) -> int:
        """Read when asked, not at wrapping: a request's wrapper is made on the event loop, where
        a failing generator must not raise."""
        return self.inner.context_length

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.inner.detokenize(ids)

    def __getattr__(self, name: str) -> object:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class BatchingGenerator(ServingWrapper):
    """Runs every call on one worker thread, merging calls that wait into one batch.

    `max_sequences` bounds the sequences (sum of n) of one merged batch; a single call larger
    than that still runs, alone.
    """

    takes_token = True  # generate(requests, token): cancellable

    def __init__(self, inner: Generator, max_sequences: int = 256) -> None:
        super().__init__(inner)
        self.max_sequences = max_sequences
        self.batches = 0  # engine batches run
        self.requests_run = 0  # requests that reached the engine
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="ttscale-engine", daemon=True)
        self._worker.start()

    def generate(self, requests: Sequence[GenerationRequest],
                 token: CancelToken | None = None) -> list[GenerationResult]:
        """Queue `requests` and wait; raises Cancelled if `token` fires before they start."""
        if not requests:
            return []
        p = _Pending(list(requests), token)
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is shut down")
            self._queue.append(p)
            self._cond.notify()
        while not p.done.wait(0.05):
            if token is not None and token.cancelled:
                with self._cond:
                    if not p.started:
                        self._queue.remove(p)
                        raise Cancelled()
        assert p.results is not None
        return p.results

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout=10)

    def _take(self) -> list[_Pending]:
        """Pending calls for the next batch (caller holds the lock); drops cancelled ones."""
        batch: list[_Pending] = []
        size = 0
        for p in list(self._queue):
            if p.token is not None and p.token.cancelled:
                continue  # its waiter removes it and raises Cancelled
            k = sum(r.params.n for r in p.requests)
            if batch and size + k > self.max_sequences:
                break
            batch.append(p)
            size += k
        for p in batch:
            self._queue.remove(p)
            p.started = True
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._take_ready():
                    self._cond.wait(0.05)
                if self._closed and not self._take_ready():
                    return
                batch = self._take()
            if not batch:
                continue
            flat = [r for p in batch for r in p.requests]
            try:
                results = self.inner.generate(flat)
            except Exception as e:  # an engine bug must not hang every waiting request
                results = [GenerationResult([], Usage(), error=f"engine failed: {e}")
                           for _ in flat]
            self.batches += 1
            self.requests_run += len(flat)
            i = 0
            for p in batch:
                p.results = results[i: i + len(p.requests)]
                i += len(p.requests)
                p.done.set()

    def _take_ready(self) -> bool:
        return any(p.token is None or not p.token.cancelled for p in self._queue)


class JobGenerator(ServingWrapper):
    """One request's view of the shared generator: meters its usage and stops its work once
    its token fires."""

    def __init__(self, inner: Generator | BatchingGenerator, token: CancelToken) -> None:
        super().__init__(inner)
        self.token = token
        self.usage = Usage()  # everything this request's work generated

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self.token.cancelled:
            raise Cancelled()
        if getattr(self.inner, "takes_token", False):  # the shared engine (batched or stepped)
            results = self.inner.generate(requests, self.token)  # type: ignore[call-arg]
        elif hasattr(self.inner, "generate_future"):  # an upstream: its calls in flight are cancelled
            results = self._wait(self.inner.generate_future(requests))
        else:
            results = self.inner.generate(requests)
        return self._count(results)

    def stream(self, request: GenerationRequest) -> Iterator[Piece | GenerationResult]:
        """A single sample's pieces as it is generated, then its result (a stepped engine:
        see `SteppingGenerator.stream`)."""
        if self.token.cancelled:
            raise Cancelled()
        for item in self.inner.stream(request, self.token):  # type: ignore[union-attr]
            if isinstance(item, GenerationResult):
                self._count([item])
            yield item

    def generate_chat(self, conversations: Sequence[list[dict[str, str]]],
                      params: SamplingParams) -> list[GenerationResult]:
        """An upstream's chat endpoint, cancelled like `generate`."""
        if self.token.cancelled:
            raise Cancelled()
        reqs = [GenerationRequest(m, params) for m in conversations]  # type: ignore[arg-type]
        return self._count(self._wait(self.inner.generate_future(reqs, chat=True)))  # type: ignore[union-attr]

    def _wait(self, fut: Future) -> list[GenerationResult]:
        """The future's results; cancels it and raises Cancelled once the token fires."""
        while True:
            try:
                return fut.result(timeout=0.05)
            except FutureTimeout:
                if self.token.cancelled:
                    fut.cancel()
                    raise Cancelled() from None

    def _count(self, results: list[GenerationResult]) -> list[GenerationResult]:
        for r in results:
            self.usage = self.usage + r.usage
        if self.token.cancelled:
            raise Cancelled()
        return results
