"""Queue places and worker slots come back on every path: a client gone at each stage of a
stream, a request past its time limit, an upstream that hangs or dies mid-request. Live
servers on loopback; the engine is held at a gate where "still queued" must be a fact."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_helpers import (MODEL, DyingUpstream, GatedGenerator, QuirkyProxy, chat_template_of,
                           engine_server, metric)

from ttscale.bench.serve import disconnect
from ttscale.serve import Limits, create_app
from ttscale.serve.build import ServeOptions, build_config
from ttscale.serve.runner import ServerThread

CHAT = {"model": MODEL, "max_tokens": 6, "messages": [{"role": "user", "content": "3+4*2"}]}
PLAIN = {"model": MODEL, "prompt": "Q: 1+2\n", "max_tokens": 3}
K = 6  # disconnects per stage (the benchmark does 200)


def wait_for(cond, timeout=30.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.02)


def idle(url, state):
    """Nothing queued, nothing running, no place held: by /metrics and by the admission."""
    return (metric(url, "ttscale_queue_depth") == 0 and metric(url, "ttscale_requests_running") == 0
            and state.admission.admitted == 0)


def test_disconnects_at_every_stage_leak_nothing(engine, random_model_dir):
    gated = GatedGenerator(engine)
    with engine_server(gated, chat_template=chat_template_of(random_model_dir),
                       limits=Limits(max_concurrency=1, max_queue=4)) as s:
        state = s.server.config.app.state.ttscale
        holder = threading.Thread(target=lambda: httpx.post(s.url + "/v1/completions",
                                                            json=PLAIN, timeout=60))
        holder.start()  # takes the only slot and stays in the engine until the gate opens
        wait_for(gated.entered.is_set)
        for stage in ("sent", "role"):  # both while queued behind the holder
            for _ in range(K):
                disconnect(s.url, "/v1/chat/completions", CHAT, stage)
            wait_for(lambda: state.admission.admitted == 1)  # only the holder
        assert gated.calls == 1  # none of them reached the engine
        gated.gate.set()
        holder.join(60)
        for stage in ("sent", "role", "token"):  # the slot is free now: they start work
            for _ in range(K):
                disconnect(s.url, "/v1/chat/completions", CHAT, stage)
                disconnect(s.url, "/v1/completions", PLAIN, stage)
        wait_for(lambda: idle(s.url, state))
        r = httpx.post(s.url + "/v1/completions", json=PLAIN, timeout=60)
        assert r.status_code == 200
        assert metric(s.url, "ttscale_cancelled_total") >= 2 * K


def test_a_timed_out_request_stops_its_upstream_call(upstream_engine_server, random_model_dir):
    quirky = QuirkyProxy(upstream_engine_server.url)
    quirky.hang_s = 60
    with ServerThread(quirky.app) as q:
        cfg = build_config(ServeOptions(upstream=[q.url], upstream_model=MODEL,
                                        upstream_shape=random_model_dir,
                                        limits=Limits(request_timeout_s=1.0)))
        with ServerThread(create_app(cfg)) as s:
            state = s.server.config.app.state.ttscale
            t0 = time.monotonic()
            r = httpx.post(s.url + "/v1/completions", json=PLAIN, timeout=60)
            assert r.status_code == 504
            wait_for(lambda: idle(s.url, state), timeout=5)  # not after the upstream's 60 s
            assert time.monotonic() - t0 < 10 and quirky.calls == 1  # a timeout is not retried


def test_an_upstream_killed_mid_request_is_a_502_and_leaks_nothing(random_model_dir):
    dying = DyingUpstream()
    cfg = build_config(ServeOptions(upstream=[dying.url], upstream_model=MODEL,
                                    upstream_shape=random_model_dir,
                                    limits=Limits(max_concurrency=2, max_queue=2)))
    cfg.generator.backoff = 0.01
    try:
        with ServerThread(create_app(cfg)) as s:
            state = s.server.config.app.state.ttscale
            for body, path in ((PLAIN, "/v1/completions"), (CHAT, "/v1/chat/completions")):
                for _ in range(3):
                    r = httpx.post(s.url + path, json=body, timeout=60)
                    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
            with httpx.stream("POST", s.url + "/v1/completions", json={**PLAIN, "stream": True},
                              timeout=60) as r:
                lines = [x for x in r.iter_lines() if x]
            assert '"upstream_error"' in lines[-2] and lines[-1] == "data: [DONE]"
            wait_for(lambda: idle(s.url, state))
            assert dying.accepted >= 7
    finally:
        dying.close()


@pytest.fixture(scope="module")
def upstream_engine_server(engine, random_model_dir):
    with engine_server(engine, chat_template=chat_template_of(random_model_dir)) as s:
        yield s
