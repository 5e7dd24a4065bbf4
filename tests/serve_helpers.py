"""Live servers on loopback for the backend and server tests (real HTTP, real engine).

`engine_server` serves the project's own engine through `ttscale.serve`; `QuirkyProxy` is a
second real FastAPI server in front of it that behaves like imperfect upstreams: it fails the
first k calls, ignores n > 1, drops logprobs, or rejects requests with a 4xx.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ttscale.serve import Limits, ServeConfig, create_app
from ttscale.serve.runner import ServerThread

MODEL = "tiny"


def load_engine(model_dir: str) -> Any:
    from ttscale.engine import load_generator

    return load_generator(model_dir, backend="torch", model_name=MODEL)


def chat_template_of(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return lambda messages: tok.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=True)


@contextlib.contextmanager
def engine_server(generator: Any, chat_template: Any = None, limits: Limits | None = None,
                  api_keys: list[str] | None = None, **cfg: Any) -> Iterator[ServerThread]:
    app = create_app(ServeConfig(generator=generator, model_name=generator.model_name,
                                 limits=limits or Limits(), api_keys=api_keys or [],
                                 chat_template=chat_template, **cfg))
    with ServerThread(app) as server:
        yield server


class QuirkyProxy:
    """A real HTTP server forwarding /v1/* to `upstream`, with the quirks of weaker servers."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail_first = 0  # answer the next k calls with `fail_status`
        self.fail_status = 503
        self.reject_status: int | None = None  # answer every call with this 4xx
        self.ignore_n = False
        self.drop_logprobs = False
        self.hang_s = 0.0  # wait this long before answering (a slow or stuck upstream)
        self.calls = 0
        self.active = self.max_active = 0  # calls being answered now, and at most at once
        self.bodies: list[dict[str, Any]] = []
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> JSONResponse:
            async with httpx.AsyncClient(timeout=60) as client:
                r = await client.get(f"{self.upstream}/v1/models")
            return JSONResponse(r.json(), status_code=r.status_code)

        @app.post("/v1/{path:path}")
        async def forward(path: str, request: Request) -> JSONResponse:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                return await answer(path, request)
            finally:
                self.active -= 1

        async def answer(path: str, request: Request) -> JSONResponse:
            self.calls += 1
            body = await request.json()
            self.bodies.append(body)
            if self.hang_s:
                await asyncio.sleep(self.hang_s)
            if self.fail_first > 0:
                self.fail_first -= 1
                return JSONResponse({"error": {"message": "overloaded, try again",
                                               "type": "server_error"}},
                                    status_code=self.fail_status)
            if self.reject_status is not None:
                return JSONResponse({"error": {"message": "model 'x' does not support this",
                                               "type": "invalid_request_error"}},
                                    status_code=self.reject_status)
            if self.ignore_n:
                body["n"] = 1
            async with httpx.AsyncClient(timeout=60) as client:
                r = await client.post(f"{self.upstream}/v1/{path}", json=body)
            data = r.json()
            if self.drop_logprobs and isinstance(data, dict):
                for c in data.get("choices", []):
                    c["logprobs"] = None
            return JSONResponse(data, status_code=r.status_code)

        self.app = app


class GatedGenerator:
    """The real engine, held at a gate: `generate` waits until the test opens it, so tests of
    queueing, timeouts and disconnects do not depend on how fast the machine is."""

    def __init__(self, inner: Any) -> None:
        from ttscale.serve.stepping import SteppingGenerator, has_scheduler

        # an engine with a step scheduler has one driving thread, shared with other servers
        self.inner = SteppingGenerator(inner) if has_scheduler(inner) else inner
        self.model_name, self.shape = inner.model_name, inner.shape
        self.context_length = inner.context_length
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def generate(self, requests: Any) -> Any:
        self.calls += 1
        self.entered.set()
        self.gate.wait(60)
        return self.inner.generate(requests)

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def detokenize(self, ids: Any) -> str:
        return self.inner.detokenize(ids)


class DyingUpstream:
    """A TCP server that reads each request and closes the connection without an answer, as
    an upstream killed mid-request looks to its clients."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.recv(65536)

    def close(self) -> None:
        self.sock.close()


def metric(url: str, name: str) -> float:
    """One value from /metrics."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    raise KeyError(name)
