"""Streaming: a single sample's chunks, with their tokens' logprobs, as the engine samples
them; keep-alive comments while a strategy works, the `ttscale` summary on the final chunk;
read by the official openai client and as raw SSE."""
from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from serve_helpers import MODEL, GatedGenerator, chat_template_of, engine_server

from ttscale.serve import Limits

COUNTDOWN = "Q: 3 5 2 -> 16\n"


class PacedEngine:
    """The real engine (no prefix cache: a request computes the same floats every time) behind
    a driver that lets the next request sample `free_steps` + 1 tokens (its first step samples
    two), then waits until the test says `go`: a stream's first chunk reaches the client while
    the rest of its tokens are still to come, however fast the machine is. The pause keys on
    the held request's own tokens, not on engine steps, so a step that samples nothing for it
    (it was not admitted yet) spends nothing."""

    def __init__(self, inner):
        self.inner = inner
        self.go = threading.Event()
        self.go.set()
        self.free_tokens = 0
        self.held = None  # the handle of the first request submitted after `hold`
        self._holding = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, request):
        handle = self.inner.submit(request)
        if self._holding and self.held is None:
            self.held = handle
        return handle

    def hold(self, free_steps: int) -> None:
        """Let the next request sample `free_steps` + 1 tokens, then wait for `go`; first let
        the engine drain what earlier requests left."""
        while self.inner.has_work():
            self.go.wait(0.01)
        self.held, self.free_tokens, self._holding = None, free_steps + 1, True
        self.go.clear()

    def _paused(self) -> bool:
        if self.go.is_set():
            self._holding = False
            return False
        h = self.held
        if h is None or h.done:
            return False
        req = h._req
        return req is not None and sum(len(s) for s in req.streams) >= self.free_tokens

    def run_loop(self, stop, idle_wait=0.05):
        while not stop.is_set():
            if self._paused():
                self.go.wait(idle_wait)
            elif self.inner.has_work():
                self.inner.step()
            else:
                self.inner.wait_for_work(idle_wait)


@pytest.fixture(scope="module")
def paced(random_model_dir):
    from ttscale.engine import load_generator

    return PacedEngine(load_generator(random_model_dir, backend="torch", model_name=MODEL,
                                      prefix_cache_bytes=0))


@pytest.fixture(scope="module")
def paced_server(paced, random_model_dir):
    # a stream that never sends its first chunk fails in 30 s instead of hanging (the engine
    # waits for the client to get it)
    with engine_server(paced, chat_template=chat_template_of(random_model_dir),
                       limits=Limits(request_timeout_s=30)) as s:
        yield s


def _first_held(stream, paced):
    """The stream's chunks that carry logprobs; the engine goes on once the first arrived
    (its one free step samples two tokens: the first is sent once the second shows it was not
    the last)."""
    got = []
    try:
        for c in stream:
            if c.choices and c.choices[0].logprobs:
                got.append(c.choices[0])
                paced.go.set()
    finally:
        paced.go.set()
    return got


def test_streamed_chat_logprobs_arrive_with_their_tokens(paced_server, paced):
    client = openai.OpenAI(base_url=paced_server.url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "3+4*2"}], max_tokens=12,
              temperature=0, logprobs=True, top_logprobs=2)
    paced.hold(1)
    chunks = _first_held(client.chat.completions.create(stream=True, **kw), paced)
    whole = client.chat.completions.create(**kw).choices[0]
    assert len(chunks) > 1  # the first came while the engine waited for the test
    first = chunks[0]
    assert first.delta.content == "".join(e.token for e in first.logprobs.content)
    streamed = [e.model_dump() for c in chunks for e in c.logprobs.content]
    assert streamed == [e.model_dump() for e in whole.logprobs.content]  # every value, exactly
    assert len(first.logprobs.content) < len(streamed)
    assert all(len(e["top_logprobs"]) == 2 for e in streamed)
    assert "".join(c.delta.content for c in chunks) == whole.message.content


def test_streamed_completion_logprobs_arrive_with_their_tokens(paced_server, paced):
    client = openai.OpenAI(base_url=paced_server.url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=MODEL, prompt="Q: 1+2\n", max_tokens=12, temperature=0, logprobs=2)
    paced.hold(1)
    chunks = _first_held(client.completions.create(stream=True, **kw), paced)
    whole = client.completions.create(**kw).choices[0]
    assert len(chunks) > 1
    first = chunks[0].logprobs
    assert chunks[0].text == "".join(first.tokens) and first.text_offset[0] == 0
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for c in chunks for x in getattr(c.logprobs, key)] == \
            getattr(whole.logprobs, key), key
    assert len(first.tokens) < len(whole.logprobs.tokens)
    assert "".join(c.text for c in chunks) == whole.text


@pytest.mark.parametrize("seed,stop,free_steps", [(1, ["NLY"], 4), (2, None, 3)])
def test_streamed_logprobs_end_where_the_answer_ends(paced_server, paced, seed, stop,
                                                     free_steps):
    """A stop string cuts the text and the tokens after it; EOS is no token of the answer:
    the streamed logprobs end where the whole answer's do. (Seed 1 writes '!)wkBWYv NLYH~&',
    one character a token; the engine waits after 4 steps, 5 tokens, until the client got a
    first chunk: text that may begin 'NLY' is held back. Seed 2 ends on EOS after 10.)"""
    body = {"model": MODEL, "prompt": "Q: 1+2\n", "max_tokens": 40, "temperature": 1.0,
            "seed": seed, "stop": stop, "logprobs": 1}
    whole = httpx.post(paced_server.url + "/v1/completions", json=body, timeout=60).json()
    lp = whole["choices"][0]["logprobs"]
    chunks = []
    paced.hold(free_steps)
    try:
        with httpx.stream("POST", paced_server.url + "/v1/completions",
                          json={**body, "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith('data: {"id"'):
                    chunks += json.loads(line[6:])["choices"]
                    paced.go.set()
    finally:
        paced.go.set()
    assert whole["choices"][0]["finish_reason"] == "stop" and 2 < len(lp["tokens"]) < 40
    assert len([c for c in chunks if c["logprobs"]]) > 1
    assert "".join(c["text"] for c in chunks) == whole["choices"][0]["text"]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for c in chunks if c["logprobs"] for x in c["logprobs"][key]] == lp[key], key


def test_a_strategy_stream_keeps_alive_then_answers(engine, random_model_dir):
    gated = GatedGenerator(engine)
    with engine_server(gated, chat_template=chat_template_of(random_model_dir),
                       keepalive_s=0.05) as s:
        body = {"model": f"majority-3/{MODEL}", "max_tokens": 6, "stream": True,
                "messages": [{"role": "user", "content": COUNTDOWN}]}
        lines = []
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                if sum(x.startswith(": working") for x in lines) == 3:
                    gated.gate.set()  # the strategy may go on once the client saw it work
    comments = [x for x in lines if x.startswith(":")]
    data = [x for x in lines if x.startswith("data: ")]
    assert len(comments) >= 3 and data[0].startswith('data: {"id"')  # the role chunk first
    assert lines.index(comments[0]) < lines.index(data[1])  # comments before the answer
    assert data[-1] == "data: [DONE]"
    assert '"ttscale": {"strategy": "majority"' in data[-2] and '"finish_reason"' in data[-2]


def test_the_openai_client_reads_a_stream_with_comments(engine, random_model_dir):
    gated = GatedGenerator(engine)
    with engine_server(gated, chat_template=chat_template_of(random_model_dir),
                       keepalive_s=0.05) as s:
        timer = threading.Timer(0.5, gated.gate.set)
        timer.start()
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model=f"majority-2/{MODEL}", messages=[{"role": "user", "content": COUNTDOWN}],
            max_tokens=6, stream=True)
        chunks = list(stream)
        timer.join()
    assert chunks[-1].model_extra["ttscale"]["num_candidates"] == 2
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_single_sample_streams_while_it_is_generated(server, engine):
    """The first text arrives while the engine is still generating (the step scheduler hands
    tokens over as they are sampled), and the pieces add up to the whole answer."""
    from ttscale.serve.stepping import has_scheduler

    if not has_scheduler(engine):
        pytest.skip("this engine has no step scheduler: streams are buffered")
    state = server.server.config.app.state.ttscale
    body = {"model": MODEL, "prompt": "Q: 3+4*2\n", "max_tokens": 200, "temperature": 0,
            "stream": True}
    pieces, running_at_first = [], None
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith('data: {"id"'):
                text = json.loads(line[6:])["choices"][0]["text"]
                if text and running_at_first is None:
                    running_at_first = state.admission.running
                pieces.append(text)
    whole = httpx.post(server.url + "/v1/completions", json={**body, "stream": False},
                       timeout=120).json()["choices"][0]["text"]
    assert running_at_first == 1  # still working when the first piece came
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == whole
