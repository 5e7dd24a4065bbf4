"""A generator that adds a task's stop strings to every request (e.g. few-shot prompts stop
before the next "Question:"), so strategies need not know the task's prompt format."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ttscale.engine.base import Generator
from ttscale.types import GenerationRequest, GenerationResult


class WithStops:
    """`generator` with `stops` appended to each request's stop strings; everything else
    (shape, tokenizer, close, ...) is the wrapped generator's."""

    def __init__(self, generator: Generator, stops: Sequence[str]) -> None:
        self.inner = generator
        self.stops = list(stops)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return self.inner.generate([self._with_stops(r) for r in requests])

    def _with_stops(self, r: GenerationRequest) -> GenerationRequest:
        stop = r.params.stop
        have = [stop] if isinstance(stop, str) else list(stop or [])
        extra = [s for s in self.stops if s not in have]
        return replace(r, params=replace(r.params, stop=have + extra)) if extra else r

    def __getattr__(self, name: str) -> Any:  # model_name, shape, context_length, tokenize...
        if name == "inner":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def with_task_stops(generator: Generator, task: Any) -> Generator:
    """`generator` itself when `task` has no `stop` strings, else a `WithStops` over it."""
    stops = tuple(getattr(task, "stop", ()) or ())
    if not stops or isinstance(generator, WithStops) and set(stops) <= set(generator.stops):
        return generator
    return WithStops(generator, stops)
