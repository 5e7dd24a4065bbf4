"""Safety and limits of `ttscale serve`: keys, size limits, the bounded queue, timeouts, client
disconnects and graceful shutdown, against live servers on loopback.

The engine is real but held at a gate (GatedGenerator), so "a request is still running" is a
fact the test controls rather than a race against the machine's speed.
"""
from __future__ import annotations

import sys
import threading
import time

import httpx
import openai
import pytest
from serve_helpers import MODEL, GatedGenerator, engine_server, load_engine, metric

from ttscale.serve import Limits, ServeConfig, create_app
from ttscale.serve.runner import ServerThread

BODY = {"model": MODEL, "prompt": "Q: 1+2\n", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def engine(random_model_dir):
    return load_engine(random_model_dir)


def post(url, body=BODY, **kw):
    return httpx.post(url + "/v1/completions", json=body, timeout=kw.pop("timeout", 60), **kw)


def in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def wait_for(cond, timeout=20.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.02)


def test_api_keys(engine, monkeypatch):
    monkeypatch.setenv("TTSCALE_API_KEYS", "env-key, other")
    from ttscale.serve.auth import load_keys

    with engine_server(engine, api_keys=load_keys(["cli-key"])) as s:
        for key in ("cli-key", "env-key"):
            c = openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
            assert c.completions.create(model=MODEL, prompt="Q: 1+1\n", max_tokens=2).choices
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="cli-keyX", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="API key"):
            bad.completions.create(model=MODEL, prompt="Q: 1+1\n", max_tokens=2)
        assert post(s.url).status_code == 401
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200


def test_body_and_prompt_limits(engine):
    limits = Limits(max_body_bytes=2000, max_prompt_chars=100)
    with engine_server(engine, limits=limits) as s:
        r = post(s.url, {**BODY, "prompt": "x" * 5000})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit holds as the body streams in
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'
        r = httpx.post(s.url + "/v1/completions", content=chunks(),
                       headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = post(s.url, {**BODY, "prompt": "1" * 150})
        assert r.status_code == 400 and r.json()["error"]["code"] == "limit_max_prompt_chars"
        assert post(s.url).status_code == 200


def test_queue_full_is_429_with_retry_after(engine):
    gated = GatedGenerator(engine)
    with engine_server(gated, limits=Limits(max_concurrency=1, max_queue=1)) as s:
        a = in_thread(lambda: post(s.url))
        wait_for(gated.entered.is_set)
        b = in_thread(lambda: post(s.url))
        wait_for(lambda: metric(s.url, "ttscale_queue_depth") == 1)
        r = post(s.url)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "limit_max_queue"
        gated.gate.set()
        for t, out in (a, b):
            t.join(60)
            assert out["r"].status_code == 200


def test_request_timeout_is_504(engine):
    gated = GatedGenerator(engine)
    with engine_server(gated, limits=Limits(request_timeout_s=0.5)) as s:
        r = post(s.url)
        assert r.status_code == 504 and "request_timeout_s" in r.json()["error"]["message"]
        gated.gate.set()
        wait_for(lambda: metric(s.url, "ttscale_requests_running") == 0)
        assert post(s.url).status_code == 200


def test_a_client_disconnect_frees_its_work(engine):
    """B waits behind A in the engine's queue; B's client gives up; B never reaches the engine
    and its place is freed, while A still finishes."""
    gated = GatedGenerator(engine)
    with engine_server(gated, limits=Limits(max_concurrency=2, max_queue=0)) as s:
        batcher = s.server.config.app.state.ttscale.generator
        a = in_thread(lambda: post(s.url))
        wait_for(gated.entered.is_set)
        with pytest.raises(httpx.ReadTimeout):
            post(s.url, timeout=httpx.Timeout(60, read=0.5))
        wait_for(lambda: metric(s.url, "ttscale_cancelled_total") == 1)
        wait_for(lambda: metric(s.url, "ttscale_requests_running") == 1)  # only A
        gated.gate.set()
        a[0].join(60)
        assert a[1]["r"].status_code == 200
        assert batcher.requests_run == 1 and gated.calls == 1
        assert post(s.url).status_code == 200  # the freed place serves the next request


def test_graceful_shutdown_finishes_requests_in_flight_and_refuses_new_ones(engine):
    gated = GatedGenerator(engine)
    app = create_app(ServeConfig(gated, MODEL))
    server = ServerThread(app).start()
    url = server.url
    a = in_thread(lambda: post(url))
    wait_for(gated.entered.is_set)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)
    gated.gate.set()
    a[0].join(60)
    stopper.join(60)
    assert a[1]["r"].status_code == 200 and a[1]["r"].json()["choices"]


def test_api_key_file_and_environment(engine, tmp_path, monkeypatch, capsys):
    from ttscale.cli import main
    from ttscale.serve.auth import load_keys

    keys = tmp_path / "keys"
    keys.write_text("# serving keys\nfile-key\n\n  second-key  \n")
    keys.chmod(0o600)
    monkeypatch.setenv("TTSCALE_API_KEY", "env-key")
    monkeypatch.delenv("TTSCALE_API_KEYS", raising=False)
    with engine_server(engine, api_keys=load_keys(files=[keys])) as s:
        for key in ("file-key", "second-key", "env-key"):
            r = post(s.url, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, key
        assert post(s.url, headers={"Authorization": "Bearer # serving keys"}).status_code == 401
    monkeypatch.setattr(sys, "argv", ["ttscale", "serve", "--api-key-file",
                                      str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--api-key-file" in err and "cannot be read" in err
    assert len(err.strip().splitlines()) == 1
