"""The FastAPI application: OpenAI's /v1 endpoints answered with test-time compute.

Each request is admitted into a bounded queue (429 beyond it), then worked on by a thread
under a deadline (504) while its client is watched (a disconnect cancels its work). Plain
requests are ordinary sampling; a strategy request runs the strategy on the problem the prompt
states and answers with the selected solution, `usage` counting every token spent.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError
from ttscale.serve.auth import KeyChecker
from ttscale.serve.batching import BatchingGenerator, Cancelled, CancelToken, JobGenerator
from ttscale.serve.dispatch import AUTO, Choice, resolve, strategies
from ttscale.serve.errors import APIError, bad_request, internal_error
from ttscale.serve.limits import Admission, BodySizeLimit, Limits
from ttscale.serve.metrics import Metrics
from ttscale.serve.stepping import Piece, SteppingGenerator, has_scheduler
from ttscale.serve.schemas import (ChatRequest, CompletionRequest, DetokenizeRequest,
                                   TokenizeRequest, chat_body, completion_body, new_id, usage_body)
from ttscale.serve.work import (Outcome, Planner, ScorerCache, effort_prompt, run_plain,
                                run_strategy, run_streamed, strategy_params)
from ttscale.types import SamplingParams

log = logging.getLogger("ttscale.serve")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request: an OpenAI error object naming the field or limit"},
    401: {"description": "Missing or invalid API key"},
    404: {"description": "Unknown model"},
    413: {"description": "Body over max_body_bytes"},
    429: {"description": "Queue full; see Retry-After"},
    502: {"description": "The upstream server failed"},
    504: {"description": "The request ran past its time limit"},
}


@dataclass
class ServeConfig:
    """What the server serves and how.

    `generator` is the backend: the embedded engine (not thread-safe: calls are merged into
    batches on one thread) or an OpenAIGenerator (`upstream=True`: its failures are 502s).
    `chat_template` renders chat messages to a prompt (the embedded model's template);
    without one, chat requests go to the upstream's own chat endpoint. `planner` answers
    `"strategy": "auto"`: `(problem, task, generator, scorer, budget) -> {"answer", "config",
    ...}` (see `ttscale.serve.auto.plan_runner`).
    """

    generator: Generator
    model_name: str
    limits: Limits = field(default_factory=Limits)
    api_keys: list[str] = field(default_factory=list)
    upstream: bool = False
    chat_template: Callable[[list[dict[str, str]]], str] | None = None
    planner: Planner | None = None
    max_batch_sequences: int = 256
    keepalive_s: float = 5.0  # a streamed request's SSE comment interval while it works


class _State:
    """Everything one app instance owns (no module-level mutable state)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.generator: Any = (cfg.generator if cfg.upstream
                               else SteppingGenerator(cfg.generator)
                               if has_scheduler(cfg.generator)
                               else BatchingGenerator(cfg.generator, cfg.max_batch_sequences))
        self.admission = Admission(cfg.limits)
        self.metrics = Metrics()
        self.keys = KeyChecker(cfg.api_keys)
        self.scorers = ScorerCache(self.generator)  # a judge shares the engine's queue
        # Threads beyond the slots let cancelled work finish while new work starts.
        self.pool = ThreadPoolExecutor(max_workers=cfg.limits.max_concurrency * 2 + 2,
                                       thread_name_prefix="ttscale-work")
        self.draining = False


def create_app(cfg: ServeConfig) -> FastAPI:
    """The ASGI app serving `cfg`; run it with uvicorn (see `ttscale.serve.runner`)."""
    state = _State(cfg)
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.draining = True  # uvicorn has stopped accepting and let requests in flight finish
        state.pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(state.generator, (BatchingGenerator, SteppingGenerator)):
            state.generator.close()

    app = FastAPI(title="ttscale", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API answered with test-time compute.")
    app.state.ttscale = state
    app.add_middleware(BodySizeLimit, max_bytes=cfg.limits.max_body_bytes)
    app.add_middleware(_Guard, state=state)  # outermost: auth before the body is read

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in err.get("loc", []) if x != "body"]
        if err.get("type") == "json_invalid":
            loc = []
        param = ".".join(loc) or None
        msg = str(err.get("msg", "invalid request"))
        if err.get("type") == "extra_forbidden":
            msg = f"unrecognized request argument supplied: {param}"
        elif err.get("type") == "json_invalid" or not loc:
            msg = f"the body is not a valid JSON request: {msg}"
        else:
            msg = f"{param}: {msg}"
        return bad_request(msg, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return APIError(e.status_code, str(e.detail), code=None).response()

    @app.get("/health", include_in_schema=True)
    async def health() -> dict[str, Any]:
        """Liveness: open without a key."""
        return {"status": "draining" if state.draining else "ok", "model": cfg.model_name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        text = state.metrics.render(state.admission.waiting, state.admission.running)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", responses={401: ERROR_RESPONSES[401]})
    async def models() -> dict[str, Any]:
        """The served model, and the same model behind each strategy prefix."""
        created = int(time.time())
        ctx = await asyncio.to_thread(lambda: cfg.generator.context_length)
        names = [cfg.model_name] + [f"{s}/{cfg.model_name}" for s in [*sorted(strategies()), AUTO]]
        return {"object": "list",
                "data": [{"id": n, "object": "model", "created": created, "owned_by": "ttscale",
                          "max_model_len": ctx} for n in names],
                "ttscale": {"strategies": sorted(strategies()) + [AUTO],
                            "scorers": _scorer_names()}}

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(req: CompletionRequest, request: Request) -> Response:
        """OpenAI's completions: text prompts (or token ids), optionally with a strategy."""
        choice = resolve(req.model, req.ttscale, cfg.model_name)
        prompts = _prompts(req.prompt)
        lim = state.limits
        lim.check("max_prompts", len(prompts), lim.max_prompts, "prompt")
        for p in prompts:
            lim.check("max_prompt_chars", len(p), lim.max_prompt_chars, "prompt")
        if req.echo:
            raise bad_request("echo is not supported", param="echo")
        params = _sampling(req, req.max_tokens, req.logprobs is not None, req.logprobs or 0,
                           state)
        _fit_context(state, prompts, params, explicit=True)
        if choice.strategy is not None and (len(prompts) != 1 or not isinstance(prompts[0], str)):
            raise bad_request("a strategy takes exactly one text prompt", param="prompt")
        job = _job(state, choice, prompts, params, req, chat_messages=None)
        rid = new_id("cmpl")
        if req.stream:
            return _stream(state, job, request, rid, req.model, chat=False,
                           include_usage=bool(req.stream_options and req.stream_options.include_usage),
                           n_prompts=len(prompts), n=req.n, logprobs=req.logprobs is not None)
        out = await _await(state, job, request)
        _record(state, out)
        choices = [{"index": i, "text": a.text, "finish_reason": a.finish_reason,
                    "logprobs": _completion_logprobs(a.completion, state) if req.logprobs is not None
                    else None, **({"token_ids": a.completion.token_ids} if req.return_token_ids
                                  and a.completion else {})}
                   for i, a in enumerate(out.choices)]
        return JSONResponse(completion_body(rid, req.model, choices, _usage(out), out.summary()))

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(req: ChatRequest, request: Request) -> Response:
        """OpenAI's chat completions; the last user message states the problem."""
        choice = resolve(req.model, req.ttscale, cfg.model_name)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        total = sum(len(m["content"]) for m in messages)
        state.limits.check("max_prompt_chars", total, state.limits.max_prompt_chars, "messages")
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = _sampling(req, max_tokens, req.logprobs, req.top_logprobs or 0, state)
        if cfg.chat_template is not None:
            prompt = await asyncio.to_thread(_render, cfg.chat_template, messages)
            _fit_context(state, [prompt], params, explicit=max_tokens is not None)
            job = _job(state, choice, [prompt], params, req, chat_messages=None)
        elif not cfg.upstream:
            raise APIError(400, "this model has no chat template; use /v1/completions",
                           code="no_chat_template")
        else:
            user = [m["content"] for m in messages if m["role"] == "user"]
            job = _job(state, choice, [user[-1] if user else ""], params, req,
                       chat_messages=messages)
        rid = new_id("chatcmpl")
        if req.stream:
            return _stream(state, job, request, rid, req.model, chat=True,
                           include_usage=bool(req.stream_options and req.stream_options.include_usage),
                           n_prompts=1, n=req.n, logprobs=req.logprobs)
        out = await _await(state, job, request)
        _record(state, out)
        choices = [{"index": i, "message": {"role": "assistant", "content": a.text,
                                            "refusal": None},
                    "finish_reason": a.finish_reason,
                    "logprobs": _chat_logprobs(a.completion, state) if req.logprobs else None}
                   for i, a in enumerate(out.choices)]
        return JSONResponse(chat_body(rid, req.model, choices, _usage(out), out.summary()))

    @app.post("/tokenize", responses={400: ERROR_RESPONSES[400]})
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        """vLLM's /tokenize: token ids of a text (without special tokens unless asked)."""
        text = req.prompt if req.prompt is not None else (req.content or "")
        state.limits.check("max_prompt_chars", len(text), state.limits.max_prompt_chars, "prompt")
        try:
            ids = await asyncio.to_thread(cfg.generator.tokenize, text)
        except TTScaleError as e:  # only an upstream's tokenizer fails
            raise _upstream_error("/tokenize", e) from None
        if req.add_special_tokens is False:
            ids = _strip_bos(ids, cfg.generator)
        return {"tokens": ids, "count": len(ids), "max_model_len": cfg.generator.context_length}

    @app.post("/detokenize", responses={400: ERROR_RESPONSES[400]})
    async def detokenize(req: DetokenizeRequest) -> dict[str, Any]:
        """vLLM's /detokenize."""
        try:
            text = await asyncio.to_thread(cfg.generator.detokenize, req.tokens)
        except TTScaleError as e:
            if not cfg.upstream:
                raise bad_request(str(e), param="tokens") from None
            raise _upstream_error("/detokenize", e) from None
        except (IndexError, ValueError, OverflowError, TypeError, KeyError) as e:
            raise bad_request(f"tokens: not valid ids for this model ({type(e).__name__})",
                              param="tokens") from None
        return {"prompt": text}

    return app


def _render(template: Callable[[list[dict[str, str]]], str],
            messages: list[dict[str, str]]) -> str:
    """The chat template applied to `messages`; a template that refuses them is a 400."""
    try:
        return template(messages)
    except APIError:
        raise
    except Exception as e:  # jinja's TemplateError (raise_exception), or a template's bug
        raise bad_request(f"messages: the model's chat template rejected them "
                          f"({type(e).__name__}: {e})", param="messages",
                          code="chat_template_error") from None


def _upstream_error(path: str, e: Exception) -> APIError:
    """An upstream's failure on `path`: a 400 when it has no such endpoint, else a 502."""
    if "endpoint" in str(e):
        return APIError(400, f"{path} is not available: {e}", code="unsupported_by_upstream")
    return APIError(502, f"upstream failure on {path}: {e}", code="upstream_error")


class _Guard:
    """ASGI middleware: API keys first, then metrics of every answered request."""

    def __init__(self, app: Any, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        status = 500
        started = False
        auth = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                     if k == b"authorization"), None)

        async def send_status(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            self.state.keys.check(path, auth)
        except APIError as e:
            await e.response()(scope, receive, send_status)
        else:
            try:
                await self.app(scope, receive, send_status)
            except Exception:  # a bug, not the client's fault: log it, answer OpenAI's shape
                log.exception("unhandled error answering %s", path)
                if not started:
                    await internal_error().response()(scope, receive, send_status)
        finally:
            self.state.metrics.observe(path if path in _PATHS else "other", status,
                                       time.perf_counter() - t0)


_PATHS = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
          "/tokenize", "/detokenize"}


def _fit_context(state: _State, prompts: list, params: SamplingParams, explicit: bool) -> None:
    """Embedded engine: 400 when a prompt (plus max_tokens, if the client set it) exceeds the
    model's context; an unset max_tokens shrinks to what the context leaves."""
    if state.cfg.upstream:
        return
    gen = state.cfg.generator
    ctx = gen.context_length
    longest = max(len(p) if isinstance(p, list) else len(gen.tokenize(p)) for p in prompts)
    if longest >= ctx:
        raise APIError(400, f"the prompt has {longest} tokens; this model's context is {ctx} "
                       "tokens (limit context_length)", code="limit_context_length",
                       param="prompt")
    if longest + params.max_tokens > ctx:
        if explicit:
            raise APIError(400, f"max_tokens={params.max_tokens} plus the prompt's {longest} "
                           f"tokens exceed this model's context of {ctx} tokens (limit "
                           "context_length)", code="limit_context_length", param="max_tokens")
        params.max_tokens = ctx - longest


def _scorer_names() -> list[str]:
    from ttscale.rewards import SCORERS

    return list(SCORERS)


def _prompts(prompt: Any) -> list[str | list[int]]:
    """OpenAI's prompt forms: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], list):
        return list(prompt)
    if prompt and isinstance(prompt[0], int):
        return [list(prompt)]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    return list(prompt)


def _sampling(req: Any, max_tokens: int | None, logprobs: bool, top_logprobs: int,
              state: _State) -> SamplingParams:
    lim = state.limits
    lim.check("max_n", req.n, lim.max_n, "n")
    if req.ttscale is not None:
        lim.check("max_samples", req.ttscale.n, lim.max_samples, "ttscale.n")
        lim.check("max_budget_flops", req.ttscale.budget_flops, lim.max_budget_flops,
                  "ttscale.budget_flops")
    lim.check("max_tokens", max_tokens, lim.max_tokens, "max_tokens")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise bad_request(f"{name} is not supported (only 0)", param=name)
    return SamplingParams(n=req.n, temperature=1.0 if req.temperature is None else req.temperature,
                          top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
                          max_tokens=max_tokens or lim.max_tokens, stop=req.stops(), seed=req.seed,
                          logprobs=logprobs, top_logprobs=top_logprobs if logprobs else 0)


@dataclass
class _Job:
    """A prepared unit of work: what runs on the worker thread, and its cancel token.

    `admitted`: it holds a place in the queue; `started`: that place now belongs to its thread.
    """

    run: Callable[[JobGenerator], Outcome]
    token: CancelToken = field(default_factory=CancelToken)
    admitted: bool = False
    started: bool = False
    answered: bool = False  # its whole answer (or error) was handed to the client
    cancelled: bool = False  # counted in the metrics as cancelled
    gen: JobGenerator | None = None  # its view of the generator, once started (for progress)
    pieces: asyncio.Queue | None = None  # streamed as generated: its Pieces (text, tokens, logprobs)


def _admit(state: _State, job: _Job) -> None:
    """Take a place in the queue: 503 while shutting down, 429 when full."""
    if state.draining:
        raise APIError(503, "the server is shutting down", code="shutting_down")
    state.admission.enter()
    job.admitted = True


def _job(state: _State, choice: Choice, prompts: list, params: SamplingParams, req: Any,
         chat_messages: list[dict[str, str]] | None) -> _Job:
    cfg = state.cfg
    if choice.strategy is None and choice.effort is not None:
        prompts, chat_messages = _at_effort(prompts, chat_messages, choice.effort)
    if choice.strategy is None:
        if chat_messages is not None:
            def run(g: JobGenerator) -> Outcome:
                return run_plain(g, prompts, params, True,
                                 chat_call=lambda p: g.generate_chat([chat_messages], p))
        elif req.stream and len(prompts) == 1 and params.n == 1 \
                and isinstance(state.generator, SteppingGenerator):
            pieces: asyncio.Queue[Piece] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            def run(g: JobGenerator) -> Outcome:
                return run_streamed(g, prompts[0], params,
                                    lambda piece: loop.call_soon_threadsafe(pieces.put_nowait,
                                                                            piece))
            job = _Job(run, pieces=pieces)
            _admit(state, job)
            return job
        else:
            def run(g: JobGenerator) -> Outcome:
                return run_plain(g, prompts, params, cfg.upstream)
        job = _Job(run)
    else:
        if req.stop:
            raise bad_request("stop is not supported with a strategy (it sets its own)",
                              param="stop")
        sampling = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
                    "max_tokens": params.max_tokens if _asked_max_tokens(req) else None,
                    "seed": req.seed}
        strategy_args = strategy_params(choice, sampling, state.limits)

        def run(g: JobGenerator) -> Outcome:
            return run_strategy(g, prompts[0], choice, strategy_args, req.n, state.scorers,
                                cfg.upstream, cfg.planner)
        job = _Job(run)
    _admit(state, job)
    return job


def _at_effort(prompts: list, chat_messages: list[dict[str, str]] | None, effort: str
               ) -> tuple[list, list[dict[str, str]] | None]:
    """A plain request's prompts (or the last user message) asked at `effort`."""
    if effort == "low":
        return prompts, chat_messages
    if any(not isinstance(p, str) for p in prompts):
        raise bad_request("ttscale.effort 'high' rewrites the prompt: send text, not token ids",
                          param="ttscale.effort", code="invalid_effort")
    if chat_messages is not None:
        users = [i for i, m in enumerate(chat_messages) if m["role"] == "user"]
        if not users:
            raise bad_request("ttscale.effort 'high' needs a user message stating the problem",
                              param="ttscale.effort", code="invalid_effort")
        chat_messages = [*chat_messages]
        m = chat_messages[users[-1]]
        chat_messages[users[-1]] = {**m, "content": effort_prompt(m["content"], effort)}
    return [effort_prompt(p, effort) for p in prompts], chat_messages


def _asked_max_tokens(req: Any) -> bool:
    if isinstance(req, ChatRequest):
        return req.max_tokens is not None or req.max_completion_tokens is not None
    return "max_tokens" in req.model_fields_set


async def _start(state: _State, job: _Job) -> "asyncio.Future[Outcome]":
    """Wait for a slot, then start the admitted job on a worker thread.

    The slot and the queue place are given back when the thread really finishes, so cancelled
    work still finishing its current engine batch keeps counting against the queue.
    """
    adm = state.admission
    await adm.acquire()
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()

    def done(_: Future) -> None:
        def release() -> None:
            adm.release(time.perf_counter() - t0)
            adm.leave()
        loop.call_soon_threadsafe(release)

    try:
        job.gen = JobGenerator(state.generator, job.token)
        fut = state.pool.submit(job.run, job.gen)
    except RuntimeError:  # the pool is shut down
        adm.release()
        raise APIError(503, "the server is shutting down", code="shutting_down") from None
    job.started = True
    fut.add_done_callback(done)
    wrapped = asyncio.wrap_future(fut)
    wrapped.add_done_callback(_retrieve)  # work whose client left: nobody reads its outcome
    return wrapped


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


async def _await(state: _State, job: _Job, request: Request | None) -> Outcome:
    """The job's Outcome; 504 past the deadline; cancels the work if the client goes away."""
    deadline = time.perf_counter() + state.limits.request_timeout_s
    waiter = asyncio.ensure_future(_start(state, job))
    fut: asyncio.Future | None = None
    try:
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                _cancel(state, job)
                raise APIError(504, f"the request ran past this server's limit request_timeout_s="
                               f"{state.limits.request_timeout_s:g}", code="limit_request_timeout_s")
            target = fut if fut is not None else waiter
            done, _ = await asyncio.wait({target}, timeout=min(0.1, remaining))
            if done and fut is None:
                fut = waiter.result()  # a 503 when shutting down
                continue
            if done:
                try:
                    return fut.result()
                except Cancelled:
                    raise APIError(499, "the request was cancelled", code="cancelled") from None
            if request is not None and await request.is_disconnected():
                _cancel(state, job)
                raise APIError(499, "the client closed the request", code="client_closed")
    finally:
        job.token.cancel()  # a no-op once the work is done
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(BaseException):
                await waiter
        _abandon(state, job)


def _usage(out: Outcome) -> dict[str, Any]:
    return usage_body(out.prompt_tokens, out.cached_tokens, out.completion_tokens)


def _record(state: _State, out: Outcome) -> None:
    state.metrics.spent(out.prompt_tokens, out.cached_tokens, out.completion_tokens, out.flops,
                        out.strategy)


def _strip_bos(ids: list[int], gen: Generator) -> list[int]:
    bos = gen.tokenize("")
    return ids[len(bos):] if bos and ids[: len(bos)] == bos else ids


def _token_texts(c: Any, state: _State) -> list[str]:
    if c is None or not c.token_ids:
        return [""] * len(c.logprobs or []) if c is not None else []
    gen = state.cfg.generator
    return [gen.detokenize([t]) for t in c.token_ids]


def _completion_logprobs(c: Any, state: _State, offset: int = 0) -> dict[str, Any] | None:
    """Completions' logprobs of `c` (a Completion, or a streamed Piece of one: its
    `text_offset`s then start at `offset`, where the piece's tokens begin)."""
    if c is None or c.logprobs is None:
        return None
    tokens = _token_texts(c, state)
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": c.logprobs,
            "top_logprobs": c.top_logprobs, "text_offset": offsets}


def _chat_logprobs(c: Any, state: _State) -> dict[str, Any] | None:
    """Chat's logprobs of `c` (a Completion, or a streamed Piece of one)."""
    if c is None or c.logprobs is None:
        return None
    tokens = _token_texts(c, state)
    tops = c.top_logprobs or [{} for _ in tokens]
    content = [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())}
                                 for k, v in top.items()]}
               for t, lp, top in zip(tokens, c.logprobs, tops)]
    return {"content": content, "refusal": None}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _stream(state: _State, job: _Job, request: Request, rid: str, model: str, chat: bool,
            include_usage: bool, n_prompts: int, n: int, logprobs: bool) -> StreamingResponse:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": rid, "object": obj, "created": created, "model": model,
                "system_fingerprint": None, "choices": choices, **extra}

    async def events() -> AsyncIterator[str]:
        count = n_prompts * n
        try:
            if chat:
                yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                   "logprobs": None, "finish_reason": None} for i in range(count)]))
            work = asyncio.ensure_future(_await(state, job, request))
            streamed = job.pieces is not None
            offset = 0  # text_offset of the next streamed token (completions)
            try:
                async for piece in _as_made(work, job.pieces, state.cfg.keepalive_s):
                    if piece is None:  # comments keep proxies and clients from timing out
                        yield _keepalive(job)
                        continue
                    lp = None
                    if logprobs and piece.logprobs:  # the piece's own tokens
                        lp = _chat_logprobs(piece, state) if chat \
                            else _completion_logprobs(piece, state, offset)
                        if not chat:
                            offset = lp["text_offset"][-1] + len(lp["tokens"][-1])
                    if not piece.text and lp is None:
                        continue
                    if chat:
                        yield _sse(chunk([{"index": 0, "delta": {"content": piece.text},
                                           "logprobs": lp, "finish_reason": None}]))
                    else:
                        yield _sse(chunk([{"index": 0, "text": piece.text, "logprobs": lp,
                                           "finish_reason": None}]))
            finally:
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(BaseException):
                        await work
                elif not work.cancelled():
                    work.exception()  # read here too: the client may be gone before below
            out = work.result()
            _record(state, out)
            last = len(out.choices) - 1
            for i, a in enumerate(out.choices):
                for piece, lp in [] if streamed else _stream_pieces(a, logprobs, chat, state):
                    if chat:
                        c = {"index": i, "delta": {"content": piece}, "logprobs": lp,
                             "finish_reason": None}
                    else:
                        c = {"index": i, "text": piece, "logprobs": lp, "finish_reason": None}
                    yield _sse(chunk([c]))
                end = ({"index": i, "delta": {}, "logprobs": None, "finish_reason": a.finish_reason}
                       if chat else {"index": i, "text": "", "logprobs": None,
                                     "finish_reason": a.finish_reason})
                # the last answer's final chunk reports what the work spent (`ttscale`)
                yield _sse(chunk([end], **({"ttscale": out.summary()} if i == last else {})))
            if include_usage:
                yield _sse(chunk([], usage=_usage(out), ttscale=out.summary()))
        except APIError as e:
            yield _sse(e.body())
        except Exception:  # a bug: the stream still ends with an error object and [DONE]
            log.exception("unhandled error while streaming %s", rid)
            yield _sse(internal_error().body())
        finally:
            job.token.cancel()  # no-op when done; stops the work if the client went away
        job.answered = True
        yield "data: [DONE]\n\n"

    return _JobStream(events(), state, job)


class _JobStream(StreamingResponse):
    """An SSE response that gives its job's queue place back however it ends: finished,
    failed, or the client gone before the first event was sent."""

    def __init__(self, content: AsyncIterator[str], state: _State, job: _Job) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self._state, self._job = state, job

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._job.answered:
                _cancel(self._state, self._job)
            _abandon(self._state, self._job)


def _cancel(state: _State, job: _Job) -> None:
    """Stop a job's work (client gone or time up), counted once in the metrics."""
    job.token.cancel()
    if not job.cancelled:
        job.cancelled = True
        state.metrics.cancel()


def _abandon(state: _State, job: _Job) -> None:
    """Stop a job's work and free its queue place if no worker thread took it over."""
    job.token.cancel()
    if job.admitted and not job.started:
        job.admitted = False
        state.admission.leave()


async def _as_made(work: asyncio.Future, pieces: asyncio.Queue | None, keepalive_s: float
                   ) -> AsyncIterator[Piece | None]:
    """Pieces as the work makes them, None when `keepalive_s` passed without any, until
    the work is done (its last pieces included)."""
    while True:
        waiters: set[asyncio.Future] = {work}
        getter = asyncio.ensure_future(pieces.get()) if pieces is not None else None
        if getter is not None:
            waiters.add(getter)
        try:
            done, _ = await asyncio.wait(waiters, timeout=keepalive_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
        if getter is not None and getter in done:
            yield getter.result()
            continue
        if work in done:
            while pieces is not None and not pieces.empty():
                yield pieces.get_nowait()
            return
        yield None


def _keepalive(job: _Job) -> str:
    """An SSE comment (clients skip it) saying how far the work has got."""
    g = job.gen
    if g is None:
        return ": queued\n\n"
    return (f": working: {g.usage.completion_tokens} tokens generated, "
            f"{g.usage.flops:.3g} FLOPs\n\n")


def _stream_pieces(a: Any, logprobs: bool, chat: bool, state: _State
                   ) -> list[tuple[str, dict[str, Any] | None]]:
    """An answer computed whole (not streamed as generated: several samples or prompts, a
    strategy, an engine without a step scheduler, an upstream) in streamed pieces: one per
    token with its logprobs when asked (and known), else line-sized pieces."""
    c = a.completion
    if not logprobs or c is None or c.logprobs is None:
        return [(p, None) for p in _pieces(a.text)]
    whole = _chat_logprobs(c, state) if chat else _completion_logprobs(c, state)
    assert whole is not None
    if chat:
        return [(e["token"], {"content": [e], "refusal": None}) for e in whole["content"]]
    tops = whole["top_logprobs"] or [None] * len(whole["tokens"])
    return [(t, {"tokens": [t], "token_logprobs": [lp], "top_logprobs": [top] if top is not None
                 else None, "text_offset": [off]})
            for t, lp, top, off in zip(whole["tokens"], whole["token_logprobs"], tops,
                                       whole["text_offset"])]


def _pieces(text: str) -> list[str]:
    """The text in line-sized pieces (at least one, possibly empty)."""
    parts = text.splitlines(keepends=True)
    return parts or [""]
