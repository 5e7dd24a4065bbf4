"""Proxy mode: `ttscale serve --upstream URL` in front of a second live server standing in for
vLLM (the project's own server over its engine), read by the official openai client."""
from __future__ import annotations

import socket

import httpx
import openai
import pytest
from serve_helpers import MODEL, QuirkyProxy, chat_template_of, engine_server, load_engine

from ttscale.serve import Limits, create_app
from ttscale.serve.build import ServeOptions, build_config
from ttscale.serve.runner import ServerThread

COUNTDOWN = "Q: 3 5 2 -> 16\n"


@pytest.fixture(scope="module")
def upstream(random_model_dir):
    engine = load_engine(random_model_dir)
    with engine_server(engine, chat_template=chat_template_of(random_model_dir)) as s:
        yield s


def front(urls, shape_from, **kw):
    """`ttscale serve --upstream URL... --upstream-shape DIR` as a live server."""
    cfg = build_config(ServeOptions(upstream=urls, upstream_shape=shape_from, **kw))
    cfg.generator.backoff = 0.01
    return ServerThread(create_app(cfg))


@pytest.fixture(scope="module")
def proxy(upstream, random_model_dir):
    with front([upstream.url], random_model_dir) as s:
        yield s


def client_of(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_plain_requests_pass_through_unchanged(proxy, upstream):
    direct, via = client_of(upstream), client_of(proxy)
    kw = dict(model=MODEL, temperature=0, max_tokens=10)
    msgs = [{"role": "user", "content": "3+4*2"}]
    a = direct.chat.completions.create(messages=msgs, **kw)
    b = via.chat.completions.create(messages=msgs, **kw)
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.usage.completion_tokens == a.usage.completion_tokens
    a = direct.completions.create(prompt="Q: 9-4\n", n=2, seed=5, **{**kw, "temperature": 1})
    b = via.completions.create(prompt="Q: 9-4\n", n=2, seed=5, **{**kw, "temperature": 1})
    assert [c.text for c in b.choices] == [c.text for c in a.choices]
    assert b.model_extra["ttscale"]["flops"] > 0
    stream = via.chat.completions.create(messages=msgs, stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        direct.chat.completions.create(messages=msgs, **kw).choices[0].message.content


def test_strategies_run_against_the_upstream(proxy):
    via = client_of(proxy)
    r = via.completions.create(model=f"majority-4/{MODEL}", prompt=COUNTDOWN, max_tokens=8)
    t = r.model_extra["ttscale"]
    assert t["strategy"] == "majority" and t["num_candidates"] == 4
    assert r.usage.completion_tokens > 0 and t["flops"] > 0
    r = via.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "3+4*2"}],
                                    max_tokens=6, extra_body={"ttscale": {
                                        "strategy": "beam_search", "scorer": "oracle", "n": 4,
                                        "params": {"width": 2, "max_depth": 3}}})
    assert r.model_extra["ttscale"]["strategy"] == "beam_search"


def test_an_upstream_that_ignores_n_still_gives_n_samples(upstream, random_model_dir):
    quirky = QuirkyProxy(upstream.url)
    quirky.ignore_n = True
    with ServerThread(quirky.app) as q, front([q.url], random_model_dir) as p:
        r = client_of(p).completions.create(model=MODEL, prompt="Q: 1+1\n", n=3, max_tokens=4)
    assert len(r.choices) == 3 and quirky.calls >= 3


def test_upstream_failure_is_502_with_the_reason(upstream, random_model_dir):
    quirky = QuirkyProxy(upstream.url)
    quirky.fail_first = 100
    with ServerThread(quirky.app) as q, front([q.url], random_model_dir,
                                              upstream_model=MODEL) as p:
        with pytest.raises(openai.InternalServerError) as e:
            client_of(p).completions.create(model=MODEL, prompt="Q: 1+1\n", max_tokens=4)
    assert e.value.status_code == 502
    assert "503" in e.value.message and "overloaded" in e.value.message


def test_upstream_max_retries_bounds_the_attempts(upstream, random_model_dir):
    quirky = QuirkyProxy(upstream.url)
    with ServerThread(quirky.app) as q:
        for retries, status in ((0, 502), (1, 200)):
            quirky.fail_first, quirky.calls = 1, 0
            with front([q.url], random_model_dir, upstream_model=MODEL,
                       upstream_max_retries=retries) as p:
                r = httpx.post(p.url + "/v1/completions", timeout=60,
                               json={"model": MODEL, "prompt": "Q: 1+1\n", "max_tokens": 4})
            assert r.status_code == status and quirky.calls == retries + 1, r.text


@pytest.mark.parametrize("kw, named", [
    ({"upstream": ["http://127.0.0.1:9"], "upstream_max_retries": -1}, "--upstream-max-retries=-1"),
    ({"upstream": ["http://127.0.0.1:9"], "upstream_timeout": 0}, "--upstream-timeout=0"),
    ({"upstream_max_retries": 2}, "--upstream-max-retries need --upstream"),
    ({"upstream_timeout": 5.0}, "--upstream-timeout need --upstream")])
def test_bad_upstream_timeout_or_retries_name_the_flag(kw, named, random_model_dir):
    from ttscale.errors import TTScaleError

    with pytest.raises(TTScaleError, match=named):
        build_config(ServeOptions(upstream_model=MODEL, upstream_shape=random_model_dir, **kw))


def test_unreachable_upstream_is_502_not_a_hang(random_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with front([f"http://127.0.0.1:{port}"], random_model_dir, upstream_model=MODEL,
               limits=Limits(request_timeout_s=30)) as p:
        with pytest.raises(openai.InternalServerError) as e:
            client_of(p).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert e.value.status_code == 502 and "could not reach" in e.value.message


def test_best_of_n_and_planner_answers_in_front_of_an_upstream(upstream, random_model_dir, tmp_path):
    """An unmodified client gets best-of-N and `auto` (plan) answers through the proxy."""
    from ttscale.planner.allocate import Option
    from ttscale.planner.plan import Plan

    plan = Plan(model=MODEL, probe_samples=2, probe_cost=1e30, edges=[], bins=[[Option("probe", 0, 0)]],
                blind=[Option("none", 0.0, 0.0), Option("majority-2", 1.0, 0.5)],
                strategies={"majority-2": {"strategy": "majority", "params": {"n": 2},
                                           "source": "samples"}},
                sampling={"temperature": 1.0, "max_tokens": 8}, calibration={"bin_sizes": [1]})
    path = str(plan.save(tmp_path / "plan.json"))
    with front([upstream.url], random_model_dir, plan=path) as s:
        c = client_of(s)
        r = c.completions.create(model=MODEL, prompt=COUNTDOWN, max_tokens=8,
                                 extra_body={"ttscale": {"strategy": "best_of_n", "n": 3,
                                                         "scorer": "oracle"}})
        t = r.model_extra["ttscale"]
        assert t["strategy"] == "best_of_n" and t["num_candidates"] == 3
        assert r.usage.completion_tokens > 0
        r = c.completions.create(model=f"auto/{MODEL}", prompt=COUNTDOWN, max_tokens=8,
                                 extra_body={"ttscale": {"budget_flops": 1e12}})
        t = r.model_extra["ttscale"]
        assert t["strategy"] == "auto" and t["config"] == "majority-2"
        assert 0 < t["flops"] <= 1e12
