"""What one request may ask for, and how much work the server takes on at once.

Requests over a limit get a 400 (413 for the body) naming the limit; beyond `max_concurrency`
running and `max_queue` waiting requests, a 429 with `Retry-After`.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from ttscale.errors import TTScaleError
from ttscale.serve.errors import APIError


@dataclass
class Limits:
    """Per-request limits and the size of the work queue."""

    max_n: int = 16  # OpenAI `n`: choices per request
    max_samples: int = 64  # `ttscale.n`: samples one strategy run may draw
    max_tokens: int = 512  # per completion
    max_budget_flops: float = 1e16  # `ttscale.budget_flops`
    max_prompt_chars: int = 16_384  # per prompt, and all chat messages together
    max_prompts: int = 16  # prompts in one /v1/completions request
    max_body_bytes: int = 1_000_000
    max_concurrency: int = 16  # requests worked on at once (their engine calls are merged)
    max_queue: int = 64  # requests waiting for a worker; beyond that, 429
    request_timeout_s: float = 120.0  # then 504

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value <= 0 and not (name == "max_queue" and value == 0):
                raise TTScaleError(f"{name}={value!r} is out of range; accepted: > 0")

    def check(self, name: str, value: float | None, limit: float, param: str) -> None:
        """400 naming the limit when `value` exceeds it."""
        if value is not None and value > limit:
            raise APIError(400, f"{param}={value} exceeds this server's limit {name}={limit:g}",
                           code=f"limit_{name}", param=param)


class Admission:
    """A bounded queue of work: `max_concurrency` slots, `max_queue` waiting places.

    `enter()` raises a 429 when all places are taken; the slot itself is awaited in `slot()`.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.admitted = 0  # running + waiting
        self.running = 0
        self._sem: asyncio.Semaphore | None = None
        self._mean_s = 1.0  # running mean of work time, for Retry-After

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def enter(self) -> None:
        lim = self.limits
        if self.admitted >= lim.max_concurrency + lim.max_queue:
            wait = math.ceil(self._mean_s * (self.waiting + 1) / lim.max_concurrency)
            raise APIError(429, f"the server is at capacity ({lim.max_concurrency} running, "
                           f"{lim.max_queue} queued: limit max_queue); retry later",
                           code="limit_max_queue", headers={"Retry-After": str(max(1, wait))})
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    async def acquire(self) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.limits.max_concurrency)
        await self._sem.acquire()
        self.running += 1

    def release(self, work_s: float | None = None) -> None:
        self.running -= 1
        assert self._sem is not None
        self._sem.release()
        if work_s is not None:
            self._mean_s = 0.9 * self._mean_s + 0.1 * work_s


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length or as it streams."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = APIError(413, f"request body exceeds this server's limit max_body_bytes="
                           f"{self.max_bytes}", code="limit_max_body_bytes").response()
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    if int(v) > self.max_bytes:
                        await too_big(scope, receive, send)
                        return
                except ValueError:
                    pass
        # Read the body up front (it is bounded), then replay it to the app.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                await too_big(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
