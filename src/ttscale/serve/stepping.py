"""Continuous batching across requests on the engine's step scheduler, and token streaming.

An engine with a step scheduler (`submit(request) -> handle`, `run_loop(stop)`; see
`ttscale.engine.scheduler`) is driven by one thread; every request of every HTTP request and
strategy round is submitted on its own and joins the running batch at the next decode step,
leaving it when done. A cancelled request (client gone, time up) leaves at the next step too.
`stream` yields a single sample's text as its tokens are sampled, in whole tokens with their
logprobs when the request asks for them.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ttscale.engine.base import Generator
from ttscale.engine.sampling import normalize_stop
from ttscale.engine.stops import decode_after
from ttscale.serve.batching import Cancelled, CancelToken, ServingWrapper
from ttscale.types import GenerationRequest, GenerationResult

POLL_S = 0.05
PIECE_GAP_S = 0.02  # a stream wakes at most this often: many streams must not starve the driver


@dataclass
class Piece:
    """A streamed piece of one sample: its text and the tokens that make it, with their
    logprobs and top alternatives (token text -> logprob) when the request asked for them."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None


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
               ) -> Iterator[Piece | GenerationResult]:
        """One single-sample request: its text in Pieces as tokens are sampled, then its
        GenerationResult. A Piece is whole tokens with their text, logprobs and top
        alternatives (when asked), so the pieces add up to the final Completion: its text, and
        its token ids with their logprobs. A token is handed out once the next one was sampled
        (so an EOS is never sent) and once its text cannot be part of a stop string."""
        p = request.params
        if p.n != 1:
            raise ValueError("stream takes a single-sample request (n=1)")
        h = self._submit(request)
        stops = normalize_stop(p.stop)
        hold = max(0, max(len(s) for s in stops) - 1) if stops else None
        want_lp, want_top = bool(p.logprobs or p.top_logprobs), p.top_logprobs > 0
        ids: list[int] = []
        lps: list[float] = []
        tops: list[dict[str, float]] = []
        sent, text = 0, ""  # tokens handed out, and their text
        try:
            while not h.done:
                if token is not None and token.cancelled:
                    raise Cancelled()
                h.wait_update(POLL_S)
                time.sleep(PIECE_GAP_S)  # let a few tokens gather
                for t in h.poll_tokens():
                    ids += t.ids
                    lps += t.logprobs or []
                    tops += t.top_logprobs or []
                end, new_text = self._ready(h.prompt_ids, ids, sent, text, hold)
                if end > sent:
                    yield Piece(new_text[len(text):], ids[sent:end],
                                lps[sent:end] if want_lp else None,
                                tops[sent:end] if want_top else None)
                    sent, text = end, new_text
        except BaseException:
            h.cancel()
            raise
        result = h.result
        if result.error is None and result.completions:
            c = result.completions[0]
            if c.text.startswith(text) and c.token_ids[:sent] == ids[:sent] \
                    and (len(c.text) > len(text) or len(c.token_ids) > sent):
                yield Piece(c.text[len(text):], c.token_ids[sent:],
                            c.logprobs[sent:] if c.logprobs is not None else None,
                            c.top_logprobs[sent:] if c.top_logprobs is not None else None)
        yield result

    def _ready(self, context: list[int], ids: list[int], sent: int, text: str, hold: int | None
               ) -> tuple[int, str]:
        """How many of `ids` can be handed out (at least `sent`, whose text is `text`) and the
        text they make; `hold`: the longest stop string's length - 1, None without stops.

        All but the newest token were checked for stop strings by the engine, so a stop string
        can only begin in their last `hold` characters: tokens whose text ends before that (and
        not inside a character split across tokens) are final."""
        end = len(ids) - 1
        if end <= sent:
            return sent, text
        checked = decode_after(self.inner.detokenize, context, ids[:end])
        limit = len(checked) - (hold or 0)
        while end > sent:
            t = checked if end == len(ids) - 1 else decode_after(self.inner.detokenize, context,
                                                                ids[:end])
            # with stop strings, strictly before the limit: a token is kept only if the text
            # before it ends before the stop string begins
            fits = len(t) < limit if hold is not None else True
            if fits and not t.endswith("\ufffd") and t.startswith(text):
                return end, t
            if len(t) < len(text):
                break
            end -= 1
        return sent, text

    def _submit(self, request: GenerationRequest) -> Any:
        self.requests_run += 1
        return self.inner.submit(request)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._driver is not None:
            self._driver.detach()
            self._driver = None
