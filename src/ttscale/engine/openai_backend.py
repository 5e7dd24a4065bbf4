"""The OpenAI-compatible backend: any server speaking /v1/completions (vLLM, SGLang, llama.cpp,
Ollama, `ttscale serve`) behind the Generator protocol.

Requests run asynchronously on a private event loop thread with bounded concurrency, spread
over several base URLs (least-loaded first; with `endpoint_concurrency` a request waits here
until a server has a free slot, so that it goes to whichever server frees first; requests with
the same prompt stay on one server while the load allows, so its prompt cache serves them:
cache-aware routing, as SGLang's router does), retried with
exponential backoff on 429, 5xx, dropped connections and connect timeouts. A request that ran
out of `timeout` (the read timeout, one answer's wait) is not retried: the same generation would
be as slow again, and `max_retries` attempts of it would fail only after max_retries + 1
timeouts. An error of one request lands in its own result; the batch never raises.
FLOPs are counted from the model shape the user gives (`shape_from`: a HF config or a GGUF
file's header, or n_params/n_layer/d_model), since a remote model cannot be inspected; with
none given they are unknown (NaN). A server that ignores `n` gets n separate requests.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import random
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ttscale.engine.flops import SHAPE_FLAGS, ModelShape, UnknownShape, shape_from
from ttscale.errors import TTScaleError
from ttscale.types import Completion, GenerationRequest, GenerationResult, SamplingParams, Usage

T = TypeVar("T")
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DEFAULT_CONTEXT = 32_768  # when the server does not report `max_model_len`
CONNECT_TIMEOUT = 10.0  # seconds to open a connection (or `timeout`, if shorter); retried
MAX_TOP_LOGPROBS = 20
AFFINITY_SLACK = 1  # a prompt's server keeps it while it has at most this many more in flight
AFFINITY_MEMORY = 4096  # prompts whose server is remembered (least recently used forgotten)


class UpstreamError(Exception):
    """A failed call to an upstream server; `status` is None when no answer came back."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after  # seconds, from the server's Retry-After header


def _prompt_key(body: dict[str, Any]) -> str:
    """What identifies a request's prompt for cache-aware routing: a digest of its prompt or
    messages (the model's KV cache depends on nothing else of the body)."""
    prompt = body.get("prompt", body.get("messages"))
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all become `.../v1`."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise TTScaleError(f"base URL {url!r} must start with http:// or https://")
    return url if url.endswith("/v1") else url + "/v1"


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a server slot (identity matters, not the fields)."""
    avoid: "_Endpoint | None"
    key: str | None
    slot: "asyncio.Future[_Endpoint]"  # set to the endpoint whose slot it was given


@dataclass
class _Endpoint:
    base: str  # .../v1
    in_flight: int = 0
    sent: int = 0  # requests given to it so far (breaks ties between equally loaded ones)

    @property
    def root(self) -> str:
        return self.base[: -len("/v1")]


class OpenAIGenerator:
    """A Generator over one or more OpenAI-compatible servers serving the same model.

    `n_params`, `n_layer` and `d_model` describe the remote model for FLOP counting (all
    three, or none: FLOPs unknown, NaN). With
    `chat=True` a text prompt is sent to /v1/chat/completions as one user message (whole
    answers only: a strategy that extends partial solutions needs the completions endpoint).
    `extra_body` is merged into every request body (e.g. vLLM's `{"repetition_penalty": 1.1}`).
    `endpoint_concurrency` caps the requests in flight per server (None: only `max_concurrency`
    overall). A server that generates one request at a time (llama.cpp's) queues the rest on its
    side, bound to it when sent; with a cap of 2 they wait here instead and take the first server
    that frees, so no server idles at the end while another works through its queue.
    `prompt_affinity` sends a request to the server that last had its prompt when that server is
    at most `AFFINITY_SLACK` requests busier than the least-loaded one (and has a free slot):
    the n samples of a problem then find their prompt in that server's cache instead of each
    server prefilling it again (llama.cpp keeps only the last prompt's KV).
    """

    def __init__(self, base_urls: str | Sequence[str], model: str, n_params: int = 0,
                 n_layer: int = 0, d_model: int = 0, api_key: str | None = None, chat: bool = False,
                 max_concurrency: int = 16, timeout: float = 600.0, max_retries: int = 4,
                 backoff: float = 0.5, context_length: int | None = None,
                 extra_body: dict[str, Any] | None = None,
                 endpoint_concurrency: int | None = None, prompt_affinity: bool = True) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise TTScaleError("OpenAIGenerator needs at least one base URL")
        if max_concurrency < 1:
            raise TTScaleError(f"max_concurrency={max_concurrency} is out of range; accepted: >= 1")
        if endpoint_concurrency is not None and endpoint_concurrency < 1:
            raise TTScaleError(f"endpoint_concurrency={endpoint_concurrency} is out of range; "
                               "accepted: >= 1, or None for no per-server cap")
        if max_retries < 0:
            raise TTScaleError(f"max_retries={max_retries} is out of range; accepted: >= 0")
        if not timeout > 0:
            raise TTScaleError(f"timeout={timeout} is out of range; accepted: seconds > 0")
        shape = (int(n_params or 0), int(n_layer or 0), int(d_model or 0))
        if any(shape) and min(shape) <= 0:
            raise TTScaleError(f"a partial shape of the remote model (n_params={shape[0]}, "
                               f"n_layer={shape[1]}, d_model={shape[2]}): give all three > 0 "
                               f"({SHAPE_FLAGS}), or none to leave FLOPs unknown")
        self.endpoints = [_Endpoint(normalize_base_url(u)) for u in urls]
        self.model_name = model
        # with no shape given, FLOPs are unknown (NaN) rather than made up
        self.shape: ModelShape | UnknownShape = ModelShape(*shape) if any(shape) else UnknownShape()
        self.chat = chat
        self.max_concurrency = max_concurrency
        self.endpoint_concurrency = endpoint_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.extra_body = dict(extra_body or {})
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._context_length = context_length
        self.prompt_affinity = prompt_affinity
        self._home: OrderedDict[str, _Endpoint] = OrderedDict()  # prompt key -> its last server
        self._waiters: list[_Waiter] = []  # requests waiting for a slot, first come first
        self._ignores_n = False  # learnt: the server answered n>1 with fewer choices
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._start_lock = threading.Lock()

    # -- the private event loop ----------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    self._client = httpx.AsyncClient(
                        timeout=httpx.Timeout(self.timeout,
                                              connect=min(self.timeout, CONNECT_TIMEOUT)),
                        limits=httpx.Limits(max_connections=self.max_concurrency * 2,
                                            max_keepalive_connections=self.max_concurrency))
                    self._sem = asyncio.Semaphore(self.max_concurrency)
                    ready.set()
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="ttscale-openai", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the private loop and wait; safe from any thread, even one whose own
        event loop is running (that loop is blocked while waiting, as for any sync call)."""
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result()

    def close(self) -> None:
        """Close connections and stop the loop thread; the generator restarts them if used again."""
        with self._start_lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        client = self._client

        async def shutdown() -> None:
            if client is not None:
                await client.aclose()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAIGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Generator protocol --------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; errors land in `result.error`."""
        if not requests:
            return []
        return self._run(self._generate_all(list(requests), self.chat))

    def generate_chat(self, conversations: Sequence[list[dict[str, Any]]],
                      params: SamplingParams) -> list[GenerationResult]:
        """Whole conversations (OpenAI `messages`) to /v1/chat/completions, one result each."""
        reqs = [GenerationRequest(m, params) for m in conversations]  # type: ignore[arg-type]
        return self._run(self._generate_all(reqs, True)) if reqs else []

    def generate_future(self, requests: Sequence[GenerationRequest],
               chat: bool | None = None) -> "concurrent.futures.Future[list[GenerationResult]]":
        """`generate` (or, with chat=True, `generate_chat` of requests whose prompts are message
        lists) as a Future; cancelling it cancels the upstream calls in flight."""
        use_chat = self.chat if chat is None else chat
        return asyncio.run_coroutine_threadsafe(self._generate_all(list(requests), use_chat),
                                                self._ensure_loop())

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """`generate` for async callers, on whatever event loop they run."""
        if not requests:
            return []
        fut = asyncio.run_coroutine_threadsafe(self._generate_all(list(requests), self.chat),
                                               self._ensure_loop())
        return await asyncio.wrap_future(fut)

    @property
    def concurrent_problems(self) -> int:
        """Problems a caller may solve at once through this generator (thread-safe): two per
        endpoint, so that every server has work queued, within `max_concurrency`."""
        return max(1, min(self.max_concurrency, 2 * len(self.endpoints)))

    @property
    def context_length(self) -> int:
        """The server's `max_model_len` from /v1/models when it reports one, else 32768."""
        if self._context_length is None:
            try:
                self._context_length = self._run(self._fetch_context_length())
            except UpstreamError:
                return DEFAULT_CONTEXT  # unknown for now; ask again next time
        return self._context_length

    def tokenize(self, text: str) -> list[int]:
        """Token ids from the server's /tokenize (vLLM, SGLang, llama.cpp have one)."""
        body = {"model": self.model_name, "prompt": text, "content": text,
                "add_special_tokens": False}
        data = self._run(self._call_root("/tokenize", body))
        if not isinstance(data.get("tokens"), list):
            raise TTScaleError(f"{self.endpoints[0].root}/tokenize answered without 'tokens'")
        return [int(t) for t in data["tokens"]]

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text from the server's /detokenize."""
        data = self._run(self._call_root("/detokenize", {"model": self.model_name,
                                                         "tokens": [int(i) for i in ids]}))
        text = data.get("prompt", data.get("content"))
        if not isinstance(text, str):
            raise TTScaleError(f"{self.endpoints[0].root}/detokenize answered without text")
        return text

    # -- internals -----------------------------------------------------------------------------
    async def _call_root(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints[0]
        try:
            return await self._post(ep, ep.root + path, body)
        except UpstreamError as e:
            if e.status in (404, 405):
                raise TTScaleError(f"the server at {ep.root} has no {path} endpoint (HTTP "
                                   f"{e.status}); pass text prompts instead of token ids") from None
            raise TTScaleError(str(e)) from None

    async def _fetch_context_length(self) -> int:
        ep = self.endpoints[0]
        assert self._client is not None
        try:
            r = await self._client.get(ep.base + "/models", headers=self._headers)
            r.raise_for_status()
            for m in r.json().get("data", []):
                if m.get("id") == self.model_name and m.get("max_model_len"):
                    return int(m["max_model_len"])
        except (httpx.HTTPError, ValueError) as e:
            raise UpstreamError(f"GET {ep.base}/models failed: {e}") from None
        return DEFAULT_CONTEXT

    def _pick(self, avoid: _Endpoint | None = None, key: str | None = None) -> _Endpoint | None:
        """The least-loaded endpoint with a free slot (ties: the one sent fewest requests),
        avoiding `avoid` when there is a choice, or the prompt `key`'s last server if it is
        nearly as free; None when every endpoint is at `endpoint_concurrency`."""
        pool = self._free()
        pool = [e for e in pool if e is not avoid] or pool
        if not pool:
            return None
        home = self._home.get(key) if key is not None else None
        if any(e is home for e in pool) and (  # identity: two URLs may be the same server
                home.in_flight <= pool[0].in_flight + AFFINITY_SLACK):
            return home
        return pool[0]

    def _free(self) -> list[_Endpoint]:
        """The endpoints with a free slot under `endpoint_concurrency`, least-loaded first
        (ties: the one sent fewest requests)."""
        cap = self.endpoint_concurrency
        return sorted((e for e in self.endpoints if cap is None or e.in_flight < cap),
                      key=lambda e: (e.in_flight, e.sent))

    async def _acquire(self, avoid: _Endpoint | None, key: str | None = None) -> _Endpoint:
        """Take a slot on the least-loaded endpoint (or the prompt `key`'s, see `_pick`), or wait
        in line for `_dispatch` to hand one over under the cap. Runs on the loop thread only,
        with no await between reading and updating the slots, so it needs no lock."""
        if not self._waiters:
            ep = self._pick(avoid, key)
            if ep is not None:
                self._take(ep, key)
                return ep
        me = _Waiter(avoid, key, asyncio.get_running_loop().create_future())
        self._waiters.append(me)
        try:
            return await me.slot
        except asyncio.CancelledError:  # a caller gone (a client disconnected): leave no trace
            if me in self._waiters:
                self._waiters.remove(me)
            elif me.slot.done() and not me.slot.cancelled():
                self._release(me.slot.result())  # handed over just before the cancel
            raise

    def _take(self, ep: _Endpoint, key: str | None) -> None:
        ep.in_flight += 1
        ep.sent += 1
        if key is not None:
            self._home[key] = ep
            self._home.move_to_end(key)
            if len(self._home) > AFFINITY_MEMORY:
                self._home.popitem(last=False)

    def _dispatch(self) -> None:
        """Hand free slots to waiting requests: a slot goes to the first waiter whose prompt
        that server last had, else to the first waiter of a prompt no server has had, else to
        the first waiter. So a problem's samples wait for their server while new problems take
        the others, and no server idles while a request waits. O(endpoints x waiters)."""
        while self._waiters:
            free = self._free()
            if not free:
                return
            w, ep = self._next_in_line(free)
            self._waiters.remove(w)
            if w.slot.done():  # cancelled while waiting; its coroutine has not run yet
                continue
            self._take(ep, w.key)
            w.slot.set_result(ep)

    def _next_in_line(self, free: list[_Endpoint]) -> tuple["_Waiter", _Endpoint]:
        """Which waiter gets which of the `free` endpoints (see `_dispatch`)."""
        for e in free:
            for w in self._waiters:
                if w.key is not None and self._home.get(w.key) is e and w.avoid is not e:
                    return w, e  # (a retry avoids the server that failed it)
        w = next((w for w in self._waiters if w.key is not None and w.key not in self._home),
                 self._waiters[0])
        ep = self._pick(w.avoid, w.key)
        assert ep is not None  # `free` is not empty
        return w, ep

    def _release(self, ep: _Endpoint) -> None:
        ep.in_flight -= 1
        self._dispatch()

    async def _post(self, ep: _Endpoint, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """One POST; raises UpstreamError saying whether a retry may help."""
        assert self._client is not None
        try:
            r = await self._client.post(url, json=body, headers=self._headers)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as e:  # no connection yet: retried
            raise UpstreamError(f"could not connect to {url} in time ({type(e).__name__})")
        except httpx.TimeoutException as e:  # a slow answer would be as slow again: no retry
            raise UpstreamError(f"{url} did not answer within the timeout of {self.timeout:g} s "
                                f"({type(e).__name__}; not retried); raise it with --timeout "
                                "(ttscale serve: --upstream-timeout)", retryable=False)
        except httpx.TransportError as e:
            raise UpstreamError(f"could not reach {url}: {type(e).__name__}: {e}")
        if r.status_code >= 400:
            raise UpstreamError(f"{url} answered HTTP {r.status_code}: {_server_message(r)}",
                                status=r.status_code, retry_after=_retry_after(r),
                                retryable=r.status_code in RETRY_STATUS or r.status_code >= 500)
        try:
            data = r.json()
        except ValueError:
            raise UpstreamError(f"{url} answered with invalid JSON: {r.text[:200]!r}")
        if not isinstance(data, dict):
            raise UpstreamError(f"{url} answered with JSON that is not an object")
        return data

    async def _post_with_retries(self, path: str, body: dict[str, Any]) -> tuple[dict, _Endpoint]:
        assert self._sem is not None
        last: UpstreamError | None = None
        ep: _Endpoint | None = None
        key = _prompt_key(body) if self.prompt_affinity and len(self.endpoints) > 1 else None
        for attempt in range(self.max_retries + 1):
            async with self._sem:
                ep = await self._acquire(avoid=ep if last is not None else None, key=key)
                try:
                    return await self._post(ep, ep.base + path, body), ep
                except UpstreamError as e:
                    last = e
                finally:
                    self._release(ep)
            if not last.retryable or attempt == self.max_retries:
                break
            delay = self.backoff * 2 ** attempt * (0.75 + 0.5 * random.random())
            await asyncio.sleep(min(max(delay, last.retry_after or 0.0), 30.0))
        assert last is not None
        if last.retryable:
            raise UpstreamError(f"upstream failed after {self.max_retries + 1} attempts: {last}",
                                last.status)
        if last.status is None:  # no answer (a read timeout): say so, not "rejected"
            raise last
        raise UpstreamError(f"upstream rejected the request: {last}", last.status, retryable=False)

    async def _generate_all(self, requests: list[GenerationRequest],
                            chat: bool) -> list[GenerationResult]:
        return list(await asyncio.gather(*(self._generate_one(r, chat) for r in requests)))

    async def _generate_one(self, req: GenerationRequest, chat: bool) -> GenerationResult:
        p = req.params
        try:
            _check_params(p, chat, req.prompt)
        except TTScaleError as e:
            return GenerationResult([], Usage(), error=str(e))
        try:
            completions, usage = await self._sample(req.prompt, p, p.n, p.seed, chat)
            # A server that ignores n answers n>1 with fewer choices: ask for the rest one by one.
            missing = p.n - len(completions)
            if missing > 0:
                self._ignores_n = self._ignores_n or len(completions) > 0
                seeds = [None if p.seed is None else p.seed + len(completions) + i
                         for i in range(missing)]
                parts = await asyncio.gather(*(self._sample(req.prompt, p, 1, s, chat)
                                               for s in seeds))
                for c, u in parts:
                    completions += c
                    usage = usage + u
            if len(completions) < p.n:
                raise UpstreamError(f"upstream returned {len(completions)} of n={p.n} choices")
        except UpstreamError as e:
            return GenerationResult([], Usage(), error=str(e))
        return GenerationResult(completions[: p.n], usage)

    async def _sample(self, prompt: Any, p: SamplingParams, n: int, seed: int | None,
                      chat: bool) -> tuple[list[Completion], Usage]:
        """One upstream call for `n` choices (or one by one if the server is known to ignore n)."""
        if n > 1 and self._ignores_n:
            seeds = [None if seed is None else seed + i for i in range(n)]
            parts = await asyncio.gather(*(self._sample(prompt, p, 1, s, chat) for s in seeds))
            return [c for cs, _ in parts for c in cs], sum((u for _, u in parts), Usage())
        body = self._body(prompt, p, n, seed, chat)
        path = "/chat/completions" if chat else "/completions"
        data, ep = await self._post_with_retries(path, body)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        completions = [self._completion(c, p, ep, chat) for c in choices]
        return completions, self._usage(data.get("usage") or {}, completions)

    def _body(self, prompt: Any, p: SamplingParams, n: int, seed: int | None,
              chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name, "n": n, "temperature": p.temperature,
                                "top_p": p.top_p, "max_tokens": p.max_tokens}
        if p.stop:
            body["stop"] = list(p.stop)
        if seed is not None:
            body["seed"] = seed
        if p.top_k > 0:
            body["top_k"] = p.top_k  # vLLM, SGLang and llama.cpp accept it as an extra field
        body.update({"min_p": p.min_p} if p.min_p > 0 else {})  # so do they min_p; 0 = off: not sent
        if chat:
            body["messages"] = prompt if isinstance(prompt, list) else [
                {"role": "user", "content": prompt}]
            if p.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = p.top_logprobs
        else:
            body["prompt"] = prompt
            if p.logprobs:
                body["logprobs"] = p.top_logprobs
        body.update(self.extra_body)
        return body

    def _completion(self, choice: dict[str, Any], p: SamplingParams, ep: _Endpoint,
                    chat: bool) -> Completion:
        if chat:
            text = ((choice.get("message") or {}).get("content")) or ""
        else:
            text = choice.get("text") or ""
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        token_ids = [int(t) for t in choice.get("token_ids") or []]  # vLLM's return_token_ids
        c = Completion(text=text, token_ids=token_ids, finish_reason=finish)
        if not p.logprobs:
            return c
        lp = choice.get("logprobs")
        if not lp:
            raise UpstreamError(
                f"{ep.base} returned no logprobs although they were requested (logprobs=True); "
                "use a server that supports logprobs (e.g. vLLM) or a strategy that needs none",
                retryable=False)
        if chat:
            content = lp.get("content") or []
            c.logprobs = [float(t["logprob"]) for t in content]
            if p.top_logprobs:
                c.top_logprobs = [{a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []}
                                  for t in content]
        else:
            c.logprobs = [float(x) if x is not None else 0.0 for x in lp.get("token_logprobs") or []]
            if p.top_logprobs:
                c.top_logprobs = [{k: float(v) for k, v in (d or {}).items()}
                                  for d in lp.get("top_logprobs") or []]
        return c

    def _usage(self, u: dict[str, Any], completions: list[Completion]) -> Usage:
        """Usage with FLOPs: uncached prompt tokens once, then each completion at its positions."""
        prompt = int(u.get("prompt_tokens") or 0)
        cached = int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        cached = min(cached, prompt)
        completion = int(u.get("completion_tokens") or 0)
        flops = self.shape.span_flops(cached, prompt - cached)
        lengths = [len(c.logprobs) if c.logprobs is not None else len(c.token_ids)
                   for c in completions]
        if not completions:
            lengths = []
        elif sum(lengths) != completion:  # per-choice lengths unknown: share the total evenly
            q, r = divmod(completion, len(completions))
            lengths = [q + (i < r) for i in range(len(completions))]
        flops += sum(self.shape.span_flops(prompt, k) for k in lengths)
        return Usage(prompt, cached, completion, flops)


def _check_params(p: SamplingParams, chat: bool, prompt: str | list[int]) -> None:
    if p.n < 1:
        raise TTScaleError(f"n={p.n} is out of range; accepted: >= 1")
    if p.max_tokens < 1:
        raise TTScaleError(f"max_tokens={p.max_tokens} is out of range; accepted: >= 1")
    if p.temperature < 0:
        raise TTScaleError(f"temperature={p.temperature} is out of range; accepted: >= 0")
    if not 0 < p.top_p <= 1:
        raise TTScaleError(f"top_p={p.top_p} is out of range; accepted: 0 < top_p <= 1")
    if p.top_k < 0:
        raise TTScaleError(f"top_k={p.top_k} is out of range; accepted: >= 0 (0 = off)")
    if not 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS:
        raise TTScaleError(f"top_logprobs={p.top_logprobs} is out of range; accepted: "
                           f"0..{MAX_TOP_LOGPROBS}")
    if chat and not isinstance(prompt, str) and not all(isinstance(m, dict) for m in prompt):
        raise TTScaleError("token-id prompts need the completions endpoint; chat=True takes text")


def _server_message(r: httpx.Response) -> str:
    """The server's own words: OpenAI's error.message, FastAPI's detail, or the raw text."""
    try:
        data = r.json()
    except ValueError:
        return r.text[:300] or r.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        if "detail" in data:
            return str(data["detail"])[:500]
        if "message" in data:
            return str(data["message"])[:500]
    return str(data)[:300]


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def shape_of_checkpoint(model: str) -> ModelShape:
    """The ModelShape of a local model of the served one's shape: a shipped name, a HF
    directory or config.json, or a .gguf file (see `flops.shape_from`)."""
    return shape_from(model)


def from_spec(urls: str | Sequence[str], model_name: str | None = None, n_params: int = 0,
              n_layer: int = 0, d_model: int = 0, shape_from: str | None = None,
              **kw: Any) -> OpenAIGenerator:
    """An OpenAIGenerator from `load_generator`-style arguments: `urls` comma-separated (or a
    list, each entry may hold several); the shape from `n_params`/`n_layer`/`d_model` or from
    `shape_from` (a local checkpoint, config.json or .gguf), else FLOPs are unknown."""
    url_list = [u.strip() for part in ([urls] if isinstance(urls, str) else urls)
                for u in str(part).split(",") if u.strip()]
    if shape_from is not None:
        if n_params or n_layer or d_model:
            raise TTScaleError(f"give either --shape-from or --n-params/--n-layer/--d-model, "
                               f"not both (got --shape-from {shape_from!r})")
        s = shape_of_checkpoint(shape_from)
        n_params, n_layer, d_model = s.n_params, s.n_layer, s.d_model
    if not model_name:
        raise TTScaleError("the openai backend needs model_name: the model's name on the server")
    return OpenAIGenerator(url_list, model_name, n_params, n_layer, d_model, **kw)
