"""Typed `ttscale` objects and no 500 from input: every bad type, range or name in
`ttscale.params` is a 400 naming the field, the params only tighten the server's limits, and
what used to be a 500 (a template that refuses the messages, an upstream without /tokenize,
a bug) is answered in OpenAI's error shape. Live servers on loopback."""
from __future__ import annotations

import socket
import time

import httpx
import pytest
from serve_helpers import MODEL, QuirkyProxy, chat_template_of, engine_server

from ttscale.serve import Limits, ServeConfig, create_app
from ttscale.serve.build import ServeOptions, build_config
from ttscale.serve.runner import ServerThread

COUNTDOWN = "Q: 3 5 2 -> 16\n"
LIMITS = Limits(max_tokens=8, max_samples=4)


@pytest.fixture(scope="module")
def small(engine, random_model_dir):
    with engine_server(engine, chat_template=chat_template_of(random_model_dir),
                       limits=LIMITS) as s:
        yield s


def ask(url, ttscale, path="/v1/completions", **body):
    body = {"model": MODEL, "prompt": COUNTDOWN, "max_tokens": 4, **body, "ttscale": ttscale}
    return httpx.post(url + path, json=body, timeout=120)


@pytest.mark.parametrize("params, field, words", [
    ({"seed": "x" * 20_000}, "seed", "valid integer"),  # once a 20 GB string, then a 500
    ({"seed": True}, "seed", "valid integer"),
    ({"temperature": "0.5"}, "temperature", "valid number"),
    ({"temperature": -1}, "temperature", "out of range"),
    ({"frobnicate": 1}, "frobnicate", "has no parameter 'frobnicate'; accepted: "),
    ({"n": [1]}, "n", "valid integer"),
    ({"max_tokens": 9}, "max_tokens", "exceeds this server's limit max_tokens=8"),
    ({"n": 5}, "n", "exceeds this server's limit max_samples=4"),
])
def test_bad_params_are_a_400_naming_the_field(small, params, field, words):
    t0 = time.perf_counter()
    r = ask(small.url, {"strategy": "majority", "params": params})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == f"ttscale.params.{field}" and words in err["message"]
    assert time.perf_counter() - t0 < 10


def test_params_tighten_limits_and_defaults_stay_within_them(small):
    r = ask(small.url, {"strategy": "majority", "n": 3, "params": {"max_tokens": 2}})
    assert r.status_code == 200, r.text
    assert 0 < r.json()["usage"]["completion_tokens"] <= 3 * 2
    # majority's own default (256 tokens) shrinks to the server's max_tokens=8
    r = httpx.post(small.url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": COUNTDOWN}],
        "ttscale": {"strategy": "majority", "n": 2}})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2 * 8
    # adaptive_consistency's default n=16 shrinks to max_samples=4
    r = ask(small.url, {"strategy": "adaptive_consistency", "params": {"max_tokens": 2}})
    assert r.status_code == 200 and r.json()["ttscale"]["num_candidates"] <= 4


def test_params_need_a_strategy(small):
    r = ask(small.url, {"params": {"seed": 1}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "params_without_strategy"


def test_params_are_checked_in_upstream_mode_before_any_call(random_model_dir):
    with socket.socket() as sock:  # nothing listens there: a 400 must not need the upstream
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = build_config(ServeOptions(upstream=[dead], upstream_model=MODEL,
                                    upstream_shape=random_model_dir, limits=LIMITS))
    with ServerThread(create_app(cfg)) as s:
        r = ask(s.url, {"strategy": "best_of_n", "scorer": "oracle",
                        "params": {"max_tokens": 4096}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "limit_max_tokens"
        r = httpx.post(s.url + "/detokenize", json={"tokens": [1, 2]}, timeout=60)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


def test_effort(small, engine):
    low = ask(small.url, {"effort": "low"}, temperature=0, max_tokens=4)
    plain = ask(small.url, None, temperature=0, max_tokens=4)
    assert low.status_code == 200 and low.json()["choices"] == plain.json()["choices"]
    high = ask(small.url, {"effort": "high"}, prompt="Q: 3+4*2\n", max_tokens=4)
    assert high.status_code == 200, high.text
    assert high.json()["usage"]["prompt_tokens"] == len(engine.tokenize("Think: 3+4*2\n"))
    r = ask(small.url, {"effort": "high", "strategy": "majority", "n": 2}, max_tokens=4)
    assert r.status_code == 200 and r.json()["ttscale"]["effort"] == "high"
    r = ask(small.url, {"effort": "medium"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "ttscale.effort"
    assert "accepted: low, high" in r.json()["error"]["message"]
    r = ask(small.url, {"effort": "high"}, prompt="tell me a story")
    assert r.status_code == 400 and r.json()["error"]["param"] == "ttscale.effort"


def test_a_chat_template_that_refuses_the_messages_is_a_400(engine, random_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(random_model_dir)
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('no system messages') }}{% endif %}"
                "Q: {{ m['content'] }}\n{% endfor %}")

    def render(messages):
        return tok.apply_chat_template(messages, chat_template=template, tokenize=False)

    with engine_server(engine, chat_template=render) as s:
        body = {"model": MODEL, "max_tokens": 2,
                "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "1"}]}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and "no system messages" in r.json()["error"]["message"]


def test_an_upstream_without_tokenize_is_a_400(engine, server):
    quirky = QuirkyProxy(server.url)  # forwards /v1/* only: no /tokenize
    with ServerThread(quirky.app) as q:
        cfg = ServeConfig(_upstream(q.url), MODEL, upstream=True)
        with ServerThread(create_app(cfg)) as s:
            r = httpx.post(s.url + "/tokenize", json={"prompt": "1+1"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_by_upstream"


def _upstream(url):
    from ttscale.engine.openai_backend import OpenAIGenerator

    return OpenAIGenerator(url, MODEL, 1000, 2, 64, max_retries=0)


class _Buggy:
    """A generator with a bug: every call raises what no handler expects."""

    model_name, shape = MODEL, None

    @property
    def context_length(self):
        raise RuntimeError("a bug")

    def generate(self, requests):
        raise RuntimeError("a bug")


def test_a_bug_is_an_openai_shaped_500_and_a_stream_still_ends(caplog):
    with ServerThread(create_app(ServeConfig(_Buggy(), MODEL, upstream=True))) as s:
        r = httpx.get(s.url + "/v1/models", timeout=60)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        body = {"model": MODEL, "prompt": "1+1", "max_tokens": 2, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=60) as resp:
            lines = [x for x in resp.iter_lines() if x]
        assert '"internal_error"' in lines[-2] and lines[-1] == "data: [DONE]"
        assert httpx.get(s.url + "/metrics", timeout=60).text.count("ttscale_queue_depth 0") == 1
    assert "RuntimeError: a bug" in caplog.text
