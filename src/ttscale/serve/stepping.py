"""Continuous batching across requests on the engine's step scheduler, and token streaming.

An engine with a step scheduler (`submit(request) -> handle`, `run_loop(stop)`; see
`ttscale.engine.scheduler`) is driven by one thread; every request of every HTTP request and
strategy round is submitted on its own and joins the running batch at the next decode step,
leaving it when done. A cancelled request (client gone, time up) leaves at the next step too.
`stream` yields a single sample's text as its tokens are sampled.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ttscale.engine.base import Generator
from ttscale.serve.batching import Cancelled, CancelToken, ServingWrapper
from ttscale.types import GenerationRequest, GenerationResult

POLL_S = 0.05
PIECE_GAP_S = 0.02  # a stream wakes at most this often: many streams must not starve the driver


def has_scheduler(engine: Any) -> bool:
    """Whether `engine` offers the step scheduler this module drives."""
    return all(callable(getattr(engine, a, None)) for a in ("submit", "run_loop"))


class _Driver:
    """The one thread that steps an engine, shared by every server over that engine."""

    _lock = threading.Lock()
    _by_engine: dict[int, "_Driver"] = {}

    def __init__(self, engine: Any) -> None:
        self.engine, self.users = engine, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=engine.run_loop, args=(self.stop,),
                                       name="ttscale-engine", daemon=True)
        self.thread.start()

    @classmethod
    def attach(cls, engine: Any) -> "_Driver":
        with cls._lock:
            d = cls._by_engine.get(id(engine))
            if d is None or d.engine is not engine:
                d = cls._by_engine[id(engine)] = _Driver(engine)
            d.users += 1
            return d

    def detach(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            self._by_engine.pop(id(self.engine), None)
        self.stop.set()
        self.thread.join(timeout=10)


class SteppingGenerator(ServingWrapper):
    """The engine behind its driving thread; `generate` from any thread, cancellable."""

    takes_token = True

    def __init__(self, inner: Generator) -> None:
        if not has_scheduler(inner):
            raise TypeError(f"{type(inner).__name__} has no step scheduler (submit, run_loop)")
        super().__init__(inner)
        self.requests_run = 0  # requests submitted to the engine
        self._driver: _Driver | None = _Driver.attach(inner)

    def generate(self, requests: Sequence[GenerationRequest],
                 token: CancelToken | None = None) -> list[GenerationResult]:
        """Submit every request (each joins the running batch) and wait for all; raises
        Cancelled, and takes the requests out of the batch, once `token` fires."""
        handles = [self._submit(r) for r in requests]
        try:
            for h in handles:
                while h.wait(POLL_S) is None and not h.done:
                    if token is not None and token.cancelled:
                        raise Cancelled()
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return [h.result for h in handles]

    def stream(self, request: GenerationRequest, token: CancelToken | None = None
               ) -> Iterator[str | GenerationResult]:
        """One single-sample request: its text in pieces as tokens are sampled, then its
        GenerationResult. Text that could begin a stop string is held back until it is known
        not to; the pieces always add up to a prefix of the final text."""
        if request.params.n != 1:
            raise ValueError("stream takes a single-sample request (n=1)")
        h = self._submit(request)
        hold = max((len(s) for s in request.params.stop or ()), default=1) - 1
        ids: list[int] = []
        sent = ""
        try:
            while not h.done:
                if token is not None and token.cancelled:
                    raise Cancelled()
                h.wait_update(POLL_S)
                time.sleep(PIECE_GAP_S)  # let a few tokens gather
                for _, new in h.poll():
                    ids += new
                text = self.inner.detokenize(ids)
                if text.endswith("\ufffd"):  # a character split across tokens
                    continue
                ready = text[: max(len(sent), len(text) - hold)]
                if len(ready) > len(sent) and ready.startswith(sent):
                    yield ready[len(sent):]
                    sent = ready
        except BaseException:
            h.cancel()
            raise
        result = h.result
        if result.error is None and result.completions:
            final = result.completions[0].text
            if final.startswith(sent) and len(final) > len(sent):
                yield final[len(sent):]
        yield result

    def _submit(self, request: GenerationRequest) -> Any:
        self.requests_run += 1
        return self.inner.submit(request)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._driver is not None:
            self._driver.detach()
            self._driver = None
