"""The OpenAI-compatible backend against real HTTP servers on loopback serving the own engine."""
from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time

import pytest
from cli_helpers import run_cli
from serve_helpers import MODEL, QuirkyProxy

from ttscale.engine.openai_backend import OpenAIGenerator
from ttscale.errors import TTScaleError
from ttscale.serve.runner import ServerThread
from ttscale.types import GenerationRequest, SamplingParams

PROMPT = "Q: 3+4*2\n"


@pytest.fixture(scope="module")
def proxy(server):
    p = QuirkyProxy(server.url)
    with ServerThread(p.app) as s:
        p.url = s.url
        yield p


@pytest.fixture
def quirky(proxy):
    """The proxy, reset to a well-behaved upstream for each test."""
    proxy.fail_first, proxy.fail_status, proxy.reject_status = 0, 503, None
    proxy.ignore_n = proxy.drop_logprobs = False
    proxy.hang_s = 0.0
    proxy.calls, proxy.bodies = 0, []
    return proxy


@pytest.fixture(scope="module")
def stuck(server):
    """A real server that takes a minute to answer, as a stuck upstream does (short graceful
    shutdown: the calls it still holds do not delay the module's end)."""
    p = QuirkyProxy(server.url)
    p.hang_s = 60.0
    with ServerThread(p.app, graceful_s=0.5) as s:
        p.url = s.url
        yield p


def remote(url, engine, **kw):
    s = engine.shape
    kw.setdefault("backoff", 0.01)
    return OpenAIGenerator(url, MODEL, s.n_params, s.n_layer, s.d_model, **kw)


def greedy(max_tokens=12, **kw):
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


def test_completions_match_the_local_engine_with_usage_and_flops(server, engine):
    with remote(server.url, engine) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, greedy())])
    [local] = engine.generate([GenerationRequest(PROMPT, greedy())])
    assert r.error is None
    assert r.completions[0].text == local.completions[0].text
    n_prompt = len(engine.tokenize(PROMPT))
    n_out = len(engine.tokenize(r.completions[0].text)) - (len(engine.tokenize("")))
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.completion_tokens == n_out
    cached = r.usage.cached_tokens
    expected = engine.shape.span_flops(cached, n_prompt - cached) + engine.shape.span_flops(n_prompt, n_out)
    assert r.usage.flops == pytest.approx(expected)


def test_n_samples_with_seed_and_token_id_prompts(server, engine):
    ids = engine.tokenize(PROMPT)
    with remote(server.url, engine) as gen:
        a, b, c = gen.generate([
            GenerationRequest(PROMPT, SamplingParams(n=3, max_tokens=8, seed=7)),
            GenerationRequest(PROMPT, SamplingParams(n=3, max_tokens=8, seed=7)),
            GenerationRequest(ids, greedy()),
        ])
    assert len(a.completions) == 3 and a.usage.completion_tokens > 0
    assert [x.text for x in a.completions] == [x.text for x in b.completions]
    assert c.error is None
    assert c.completions[0].text == engine.generate([GenerationRequest(PROMPT, greedy())])[0].completions[0].text


def test_chat_renders_the_models_template(server, engine, random_model_dir):
    with remote(server.url, engine, chat=True) as gen:
        [r] = gen.generate([GenerationRequest("3+4*2", greedy())])
    [local] = engine.generate([GenerationRequest(PROMPT, greedy())])  # the template gives "Q: 3+4*2\n"
    assert r.error is None
    assert r.completions[0].text == local.completions[0].text


def test_logprobs_and_top_logprobs_match_the_engine(server, engine):
    p = greedy(logprobs=True, top_logprobs=2)
    with remote(server.url, engine) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, p)])
    with remote(server.url, engine, chat=True) as gen:
        [rc] = gen.generate([GenerationRequest("3+4*2", p)])
    [local] = engine.generate([GenerationRequest(PROMPT, p)])
    for got in (r.completions[0], rc.completions[0]):
        assert got.logprobs == pytest.approx(local.completions[0].logprobs, abs=1e-4)
        assert len(got.top_logprobs) == len(got.logprobs)
        assert all(len(d) == 2 for d in got.top_logprobs)


def test_stop_strings_cut_the_text(server, engine):
    with remote(server.url, engine) as gen:
        [full] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=16))])
        text = full.completions[0].text
        stop = text[3:5]
        [cut] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=16, stop=[stop]))])
    assert cut.completions[0].text == text[: text.index(stop)]
    assert cut.completions[0].finish_reason == "stop"


def test_retries_503_then_succeeds(quirky, engine):
    quirky.fail_first = 2
    with remote(quirky.url, engine, max_retries=3) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
    assert r.error is None and len(r.completions) == 1
    assert quirky.calls == 3


def test_gives_up_after_max_retries_naming_status_and_message(quirky, engine):
    quirky.fail_first, quirky.fail_status = 10, 429
    with remote(quirky.url, engine, max_retries=2) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
    assert quirky.calls == 3
    assert "429" in r.error and "overloaded, try again" in r.error and "3 attempts" in r.error


def test_other_4xx_is_not_retried_and_names_the_servers_message(quirky, engine):
    quirky.reject_status = 400
    with remote(quirky.url, engine) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
    assert quirky.calls == 1
    assert r.completions == []
    assert "400" in r.error and "does not support this" in r.error


def test_unreachable_server_is_a_clear_error(engine):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with remote(f"http://127.0.0.1:{port}", engine, max_retries=1) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
    assert "could not reach" in r.error and str(port) in r.error


def test_an_upstream_that_ignores_n_gets_separate_requests(quirky, engine):
    quirky.ignore_n = True
    with remote(quirky.url, engine) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, SamplingParams(n=3, max_tokens=4, seed=1))])
        assert len(r.completions) == 3 and quirky.calls == 3
        quirky.calls = 0
        [r] = gen.generate([GenerationRequest(PROMPT, SamplingParams(n=2, max_tokens=4, seed=1))])
        assert len(r.completions) == 2 and quirky.calls == 2  # learnt: no wasted n=2 call
    assert {b["seed"] for b in quirky.bodies[-2:]} == {1, 2}


def test_missing_logprobs_is_a_clear_error(quirky, engine):
    quirky.drop_logprobs = True
    with remote(quirky.url, engine) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4, logprobs=True))])
        [ok] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
    assert "no logprobs" in r.error
    assert ok.error is None


def test_two_base_urls_share_the_load(server, engine):
    proxies = [QuirkyProxy(server.url), QuirkyProxy(server.url)]
    with ServerThread(proxies[0].app) as a, ServerThread(proxies[1].app) as b:
        with remote([a.url, b.url], engine, max_concurrency=4) as gen:
            results = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4, seed=i))
                                    for i in range(8)])
    assert all(r.error is None for r in results)
    assert proxies[0].calls > 0 and proxies[1].calls > 0
    assert proxies[0].calls + proxies[1].calls == 8


@pytest.mark.parametrize("affinity", [True, False])
def test_requests_with_one_prompt_stay_on_one_server_while_the_load_allows(server, engine,
                                                                           affinity):
    """Cache-aware routing: the samples of a prompt find it in one server's prompt cache (a
    server like llama.cpp keeps only the last prompt's KV) and the servers still share the
    work; without affinity, least-loaded routing splits every prompt over both."""
    proxies = [QuirkyProxy(server.url), QuirkyProxy(server.url)]
    prompts = [f"Q: {k}+{k}*2\n" for k in range(4)]
    with ServerThread(proxies[0].app) as a, ServerThread(proxies[1].app) as b:
        with remote([a.url, b.url], engine, max_concurrency=8, prompt_affinity=affinity) as gen:
            results = gen.generate([GenerationRequest(p, greedy(max_tokens=4, seed=i))
                                    for p in prompts for i in range(2)])
    assert all(r.error is None for r in results)
    servers_of = {p: {k for k, px in enumerate(proxies) for body in px.bodies
                      if body["prompt"] == p} for p in prompts}
    assert proxies[0].calls > 0 and proxies[1].calls > 0
    assert proxies[0].calls + proxies[1].calls == 8
    split = [p for p in prompts if len(servers_of[p]) > 1]
    assert (split == []) if affinity else (len(split) >= 2)


def test_a_freed_slot_goes_to_the_waiter_whose_prompt_that_server_has():
    """Under a per-server cap, requests wait on the client; when a slot frees on a server, the
    first waiter whose prompt that server had gets it, else the first waiter of a prompt no
    server has had, else the first waiter (no server idles while a request waits)."""
    from ttscale.engine.openai_backend import _Waiter

    loop = asyncio.new_event_loop()
    gen = OpenAIGenerator(["http://a", "http://b"], MODEL, endpoint_concurrency=1)
    a, b = gen.endpoints
    gen._home.update({"p1": a, "p2": b})

    def free_b_with_waiting(*keys):
        a.in_flight = b.in_flight = 1
        gen._waiters[:] = [_Waiter(None, k, loop.create_future()) for k in keys]
        waiting = list(gen._waiters)
        gen._release(b)
        return [w.key for w in waiting if w.slot.done()], [w.key for w in gen._waiters]

    assert free_b_with_waiting("p1", "p3", "p2") == (["p2"], ["p1", "p3"])  # p2 is in b's cache
    assert free_b_with_waiting("p1", "p3") == (["p3"], ["p1"])  # p1 waits for a; p3 starts on b
    assert free_b_with_waiting("p1") == (["p1"], [])  # nobody else: p1 spills, b does not idle
    assert gen._home["p3"] is b and b.in_flight == 1
    loop.close()


def test_a_request_cancelled_while_waiting_for_a_slot_leaves_no_trace():
    """A caller that goes away (a client disconnect in `ttscale serve`) while its request waits
    for a slot neither keeps a place in line nor holds a slot: the next request gets it."""
    gen = OpenAIGenerator(["http://a", "http://b"], MODEL, endpoint_concurrency=1)
    a, b = gen.endpoints

    async def scenario():
        a.in_flight = b.in_flight = 1
        gone = asyncio.create_task(gen._acquire(None, "p1"))
        kept = asyncio.create_task(gen._acquire(None, "p2"))
        await asyncio.sleep(0)
        assert len(gen._waiters) == 2
        gone.cancel()
        await asyncio.sleep(0)
        gen._release(a)
        return await kept

    assert asyncio.run(scenario()) is a
    assert gen._waiters == [] and (a.in_flight, b.in_flight) == (1, 1)

    async def handed_then_cancelled():  # the slot reached it, its caller left before it ran
        a.in_flight = b.in_flight = 1
        gone = asyncio.create_task(gen._acquire(None, "p3"))
        kept = asyncio.create_task(gen._acquire(None, "p4"))
        await asyncio.sleep(0)
        gen._release(a)  # hands a to `gone`
        gone.cancel()
        return await kept

    assert asyncio.run(handed_then_cancelled()) is a
    assert gen._waiters == [] and (a.in_flight, b.in_flight) == (1, 1)


def test_endpoint_concurrency_sends_each_request_to_the_first_server_that_frees(server, engine):
    """Capped at one request per server, a slow server is given only what it can take at once:
    the rest wait on the client and go to the fast server as it frees (sent eagerly, half of
    them would queue at the slow one)."""
    slow, fast = QuirkyProxy(server.url), QuirkyProxy(server.url)
    slow.hang_s = 1.0
    with ServerThread(slow.app) as a, ServerThread(fast.app) as b:
        with remote([a.url, b.url], engine, max_concurrency=10, endpoint_concurrency=1) as gen:
            results = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4, seed=i))
                                    for i in range(10)])
    assert all(r.error is None for r in results)
    assert slow.calls + fast.calls == 10
    assert slow.max_active == 1 and fast.max_active == 1
    assert slow.calls <= 3 < fast.calls
    with pytest.raises(TTScaleError, match="endpoint_concurrency=0"):
        remote(server.url, engine, endpoint_concurrency=0)


def test_one_bad_request_does_not_fail_the_batch(server, engine):
    with remote(server.url, engine) as gen:
        bad, good = gen.generate([GenerationRequest(PROMPT, SamplingParams(top_p=0.0)),
                                  GenerationRequest(PROMPT, greedy(max_tokens=4))])
    assert "top_p=0.0" in bad.error
    assert good.error is None


def test_usable_from_a_running_event_loop_and_from_threads(server, engine):
    with remote(server.url, engine) as gen:
        async def main():
            sync = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
            asyn = await gen.agenerate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
            return sync, asyn

        sync, asyn = asyncio.run(main())
        out = []
        threads = [threading.Thread(target=lambda: out.append(
            gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])[0]))
            for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sync[0].completions[0].text == asyn[0].completions[0].text
    assert [r.completions[0].text for r in out] == [sync[0].completions[0].text] * 3


def test_tokenize_through_the_server_and_a_clear_error_without(server, quirky, engine):
    with remote(server.url, engine) as gen:
        ids = gen.tokenize("Q: 12+7")
        assert gen.detokenize(ids) == "Q: 12+7"
        assert gen.context_length == engine.context_length
    with remote(quirky.url, engine) as gen, pytest.raises(TTScaleError, match="no /tokenize"):
        gen.tokenize("Q: 1+1")


def test_bad_configuration_is_refused(engine):
    with pytest.raises(TTScaleError, match="http"):
        remote("localhost:8000", engine)
    with pytest.raises(TTScaleError, match="max_concurrency"):
        remote("http://127.0.0.1:1", engine, max_concurrency=0)


def test_cached_prompt_tokens_are_reported_and_cost_no_flops(server, engine):
    prompt = "Q: 11+22*3-4+5*6\n"
    with remote(server.url, engine) as gen:
        [first] = gen.generate([GenerationRequest(prompt, greedy(max_tokens=4))])
        [again] = gen.generate([GenerationRequest(prompt, greedy(max_tokens=4))])
    assert again.usage.cached_tokens > first.usage.cached_tokens
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    assert again.usage.flops < first.usage.flops


def test_load_generator_openai_reads_the_shape_from_a_checkpoint(server, engine, random_model_dir):
    from ttscale.engine import load_generator

    gen = load_generator(server.url, backend="openai", model_name=MODEL,
                         shape_from=random_model_dir)
    try:
        assert gen.shape == engine.shape
        [r] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
        assert r.error is None and r.usage.flops > 0
    finally:
        gen.close()


# -- FLOPs of a remote model: from its files, or unknown ---------------------------------------
def test_without_a_shape_flops_are_unknown_not_refused(server):
    with OpenAIGenerator(server.url, MODEL) as gen:
        [r] = gen.generate([GenerationRequest(PROMPT, greedy(max_tokens=4))])
    assert r.error is None and r.completions[0].text
    assert not gen.shape.known and math.isnan(r.usage.flops)


@pytest.mark.parametrize("shape", [{"n_params": 1000}, {"n_layer": 2, "d_model": 64},
                                   {"n_params": 1000, "n_layer": -1, "d_model": 64}])
def test_a_partial_shape_names_the_flags(shape):
    with pytest.raises(TTScaleError, match="--n-params, --n-layer and --d-model, or "
                                           "--shape-from") as e:
        OpenAIGenerator("http://127.0.0.1:1", MODEL, **shape)
    assert "\n" not in str(e.value)


def test_shape_from_a_config_json_or_a_gguf_header(server, engine, random_model_dir, tmp_path):
    from ttscale.engine import load_generator

    gen = load_generator(server.url, backend="openai", model_name=MODEL,
                         shape_from=f"{random_model_dir}/config.json")
    assert gen.shape == engine.shape  # config.json alone counts the same parameters
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the test's GGUF file")
    import numpy as np

    f = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(f), "llama")
    w.add_block_count(7)
    w.add_embedding_length(96)
    w.add_tensor("token_embd.weight", np.zeros((10, 96), dtype=np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((96, 5), dtype=np.float32))
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file,
                 w.close):
        step()
    gen = load_generator(server.url, backend="openai", model_name=MODEL, shape_from=str(f))
    assert (gen.shape.n_params, gen.shape.n_layer, gen.shape.d_model) == (960 + 480, 7, 96)


def _solve_cli(*args):
    from typer.testing import CliRunner

    from ttscale.cli import app

    res = CliRunner().invoke(app, ["solve", "--backend", "openai", "--model", MODEL,
                                   "--task", "arith", "--level", "1", "--num-problems", "3",
                                   "--max-tokens", "8", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_solve_reports_unknown_flops_or_counts_them_from_shape_from(server, random_model_dir):
    unknown = _solve_cli("--base-url", server.url)
    assert unknown["flops_known"] is False and unknown["mean_flops"] is None
    assert all(r["flops"] is None and r["tokens"] > 0 for r in unknown["problems"])
    known = _solve_cli("--base-url", server.url, "--shape-from", random_model_dir)
    assert known["flops_known"] is True and known["mean_flops"] > 0
    assert [r["answer"] for r in known["problems"]] == [r["answer"] for r in unknown["problems"]]


def test_solve_fans_out_over_repeated_base_urls(server, random_model_dir):
    proxies = [QuirkyProxy(server.url), QuirkyProxy(server.url)]
    with ServerThread(proxies[0].app) as a, ServerThread(proxies[1].app) as b:
        both = _solve_cli("--base-url", a.url, "--base-url", b.url, "--strategy", "majority",
                          "--n", "4", "--shape-from", random_model_dir)
    one = _solve_cli("--base-url", server.url, "--strategy", "majority", "--n", "4",
                     "--shape-from", random_model_dir)
    assert proxies[0].calls > 0 and proxies[1].calls > 0  # both servers did work
    assert both["accuracy"] == one["accuracy"]  # same seeds, same answers, wherever they ran
    assert [r["answer"] for r in both["problems"]] == [r["answer"] for r in one["problems"]]


def test_few_shot_prompts_send_the_stop_before_the_next_question(quirky, engine, tmp_path):
    from ttscale.strategies import solve
    from ttscale.tasks import get_task

    rec = {"question": "Ann has 1 pen and gets 1 more. How many?", "answer": "1+1=2\n#### 2"}
    (tmp_path / "t_test.jsonl").write_text(json.dumps(rec) + "\n")
    (tmp_path / "t_train.jsonl").write_text(json.dumps(dict(rec, question="Bo has 2.")) + "\n")
    task = get_task(str(tmp_path / "t_test.jsonl"), shots=1)
    with remote(quirky.url, engine) as gen:
        solve(task.problems()[0], task, gen, "majority", {"n": 2, "max_tokens": 4})
    assert quirky.bodies and all("\nQuestion:" in b["stop"] for b in quirky.bodies)
    assert quirky.bodies[0]["prompt"].startswith("Question: Bo has 2.\nAnswer: 1+1=2\n#### 2")
    task.close()


def test_eval_over_a_server_matches_the_local_engine_with_flops_unknown(server, random_model_dir):
    from typer.testing import CliRunner

    from ttscale.cli import app

    common = ["eval", "--task", "arith", "--level", "1", "--num-problems", "3", "--n", "2",
              "--max-tokens", "8", "--json"]
    res = CliRunner().invoke(app, [*common, "--backend", "openai", "--base-url", server.url,
                                   "--model", MODEL])
    assert res.exit_code == 0, res.output
    remote_row = json.loads(res.output)
    local = CliRunner().invoke(app, [*common, "--model", random_model_dir])
    local_row = json.loads(local.output)
    assert remote_row["flops"] is None and local_row["flops"] > 0
    for key in ("greedy_acc", "maj_acc", "pass_at_n", "mean_tokens"):
        assert remote_row[key] == local_row[key], key


def _command(name, tmp_path):
    """The smallest run of `name` over one problem of the served model."""
    one = ["--task", "arith", "--level", "1", "--num-problems", "1", "--max-tokens", "8"]
    return {"solve": ["solve", "--model", MODEL, *one],
            "eval": ["eval", "--model", MODEL, "--n", "0", *one],
            "sweep": ["sweep", "--model", MODEL, "--baseline-model", MODEL, "--task", "arith",
                      "--levels", "1", "--num-problems", "1", "--n-max", "2", "--ns", "1,2",
                      "--max-tokens", "8", "--out", str(tmp_path / "sweep"), "--no-report"],
            }[name]


@pytest.mark.parametrize("command", ["solve", "eval", "sweep"])
def test_a_stuck_server_fails_the_command_at_timeout_unretried(command, stuck, monkeypatch,
                                                               capsys, random_model_dir, tmp_path):
    before = len(stuck.bodies)
    t0 = time.monotonic()
    code, _, err = run_cli(monkeypatch, capsys, *_command(command, tmp_path), "--backend", "openai",
                      "--base-url", stuck.url, "--shape-from", random_model_dir,
                      "--timeout", "1", "--max-retries", "3")
    took = time.monotonic() - t0
    err = err.splitlines()[-1]  # the error line, after eval's progress bar
    assert code == 2 and err.startswith("error: "), err
    assert "did not answer within the timeout of 1 s" in err and "--timeout" in err, err
    assert took < 20  # the server would have answered after 60 s
    sent = [json.dumps(b, sort_keys=True) for b in stuck.bodies[before:]]
    assert sent and len(sent) == len(set(sent))  # each request sent once: none was retried


def test_max_retries_reaches_the_backend(quirky, monkeypatch, capsys, random_model_dir, tmp_path):
    quirky.fail_first = 1
    code, _, err = run_cli(monkeypatch, capsys, *_command("solve", tmp_path), "--backend", "openai",
                      "--base-url", quirky.url, "--max-retries", "0")
    assert code == 2 and "after 1 attempts" in err and "503" in err, err
    quirky.fail_first = 1
    code, _, err = run_cli(monkeypatch, capsys, *_command("solve", tmp_path), "--backend", "openai",
                      "--base-url", quirky.url, "--max-retries", "1")
    assert code == 0, err


@pytest.mark.parametrize("command", ["solve", "eval", "sweep"])
@pytest.mark.parametrize("args, named", [
    (["--backend", "openai", "--base-url", "http://127.0.0.1:9", "--timeout", "0"], "--timeout 0.0"),
    (["--backend", "openai", "--base-url", "http://127.0.0.1:9", "--timeout", "-2"], "--timeout -2.0"),
    (["--backend", "openai", "--base-url", "http://127.0.0.1:9", "--max-retries", "-1"],
     "--max-retries -1"),
    (["--timeout", "5"], "--timeout applies only to --backend openai"),
    (["--max-retries", "2"], "--max-retries applies only to --backend openai")])
def test_bad_timeout_or_retries_is_one_line_exit_2(command, args, named, monkeypatch, capsys,
                                                   tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, *_command(command, tmp_path), *args)
    assert code == 2 and "\n" not in err and err.startswith("error: ") and named in err, err
    assert "accepted" in err or "only to" in err
