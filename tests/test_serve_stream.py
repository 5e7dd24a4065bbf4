"""Streaming: logprobs in streamed chunks, keep-alive comments while a strategy works, the
`ttscale` summary on the final chunk; read by the official openai client and as raw SSE."""
from __future__ import annotations

import threading

import httpx
import openai
import pytest
from serve_helpers import MODEL, GatedGenerator, chat_template_of, engine_server

COUNTDOWN = "Q: 3 5 2 -> 16\n"


def test_streamed_logprobs_match_the_whole_answer(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "3+4*2"}], max_tokens=8,
              temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kw)
    chunks = [c for c in client.chat.completions.create(stream=True, **kw) if c.choices]
    content = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in content] == [e.token for e in whole.choices[0].logprobs.content]
    assert [e.logprob for e in content] == pytest.approx(  # the prefix cache: float noise
        [e.logprob for e in whole.choices[0].logprobs.content], abs=1e-4)
    assert all(len(e.top_logprobs) == 2 for e in content)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        whole.choices[0].message.content
    texts = client.completions.create(model=MODEL, prompt="Q: 1+2\n", max_tokens=6, logprobs=1,
                                      temperature=0, stream=True)
    pieces = [c.choices[0] for c in texts if c.choices and c.choices[0].logprobs]
    assert all(len(p.logprobs.tokens) == 1 and p.logprobs.tokens[0] == p.text for p in pieces)


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
                import json

                text = json.loads(line[6:])["choices"][0]["text"]
                if text and running_at_first is None:
                    running_at_first = state.admission.running
                pieces.append(text)
    whole = httpx.post(server.url + "/v1/completions", json={**body, "stream": False},
                       timeout=120).json()["choices"][0]["text"]
    assert running_at_first == 1  # still working when the first piece came
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == whole
