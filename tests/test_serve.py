"""`ttscale serve` through the official openai client, against a live server on loopback."""
from __future__ import annotations

import httpx
import openai
import pytest
from serve_helpers import MODEL, chat_template_of, engine_server

from ttscale.types import GenerationRequest, SamplingParams

COUNTDOWN = "Q: 3 5 2 -> 16\n"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def local_greedy(engine, prompt, max_tokens):
    [r] = engine.generate([GenerationRequest(prompt, SamplingParams(temperature=0.0,
                                                                      max_tokens=max_tokens))])
    return r.completions[0].text


def test_chat_answers_like_the_engine_on_the_templated_prompt(client, engine):
    r = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=10,
                                       messages=[{"role": "system", "content": "be exact"},
                                                 {"role": "user", "content": "3+4*2"}])
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == local_greedy(engine, "Q: 3+4*2\n", 10)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(engine.tokenize("Q: 3+4*2\n"))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["ttscale"]["strategy"] == "sample"
    assert r.model_extra["ttscale"]["flops"] > 0


def test_completions_with_n_and_logprobs(client):
    r = client.completions.create(model=MODEL, prompt=["Q: 1+2\n", "Q: 7*3\n"], n=2,
                                  max_tokens=6, logprobs=2, seed=3)
    assert r.object == "text_completion" and len(r.choices) == 4
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        lp = c.logprobs
        assert "".join(lp.tokens) == c.text
        assert len(lp.token_logprobs) == len(lp.tokens) and all(x <= 0 for x in lp.token_logprobs)
        assert all(len(d) == 2 for d in lp.top_logprobs)
    assert r.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in r.choices)


def test_streaming_chat_and_completions_read_by_the_client(client, engine):
    want = local_greedy(engine, "Q: 3+4*2\n", 12)
    stream = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "3+4*2"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    stream = client.completions.create(model=MODEL, prompt="Q: 3+4*2\n", temperature=0,
                                       max_tokens=12, stream=True)
    assert "".join(c.choices[0].text for c in stream) == want


def test_sse_ends_with_done(server):
    body = {"model": MODEL, "prompt": "Q: 1+1\n", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    assert all(x.startswith("data: ") for x in lines)


def test_majority_vote_through_extra_body_counts_every_token(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": COUNTDOWN}], max_tokens=12, seed=0,
        extra_body={"ttscale": {"strategy": "majority", "n": 4, "return_candidates": True}})
    t = r.model_extra["ttscale"]
    assert t["strategy"] == "majority" and t["num_candidates"] == 4 and t["task"] == "countdown"
    assert len(t["candidates"]) == 4
    assert r.choices[0].message.content in [c["text"] for c in t["candidates"]]
    # four samples of up to 12 tokens: usage counts all of them, not just the chosen one
    assert r.usage.completion_tokens > 12 or r.usage.completion_tokens == 4 * 12
    assert t["flops"] > 0 and t["wall_s"] > 0


def test_model_name_prefix_picks_the_strategy(client):
    r = client.completions.create(model=f"best_of_n-3/{MODEL}", prompt=COUNTDOWN, max_tokens=8,
                                  extra_body={"ttscale": {"scorer": "oracle"}})
    t = r.model_extra["ttscale"]
    assert t["strategy"] == "best_of_n" and t["num_candidates"] == 3
    r = client.completions.create(model=f"beam_search/{MODEL}", prompt="Q: 3+4*2\n", max_tokens=8,
                                  extra_body={"ttscale": {"scorer": "oracle", "n": 4,
                                                          "params": {"width": 2, "max_depth": 3}}})
    assert r.model_extra["ttscale"]["strategy"] == "beam_search"
    assert r.usage.completion_tokens > 0
    r = client.completions.create(model=f"best_of_n-2/{MODEL}", prompt="hello", max_tokens=6,
                                  extra_body={"ttscale": {"scorer": "self-certainty",
                                                          "return_candidates": True}})
    assert all(c["score"] is not None for c in r.model_extra["ttscale"]["candidates"])


def test_models_lists_the_model_and_strategies(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL
    assert f"majority/{MODEL}" in ids and f"beam_search/{MODEL}" in ids and f"auto/{MODEL}" in ids


@pytest.mark.parametrize("kwargs, error, words", [
    ({"model": "gpt-4"}, openai.NotFoundError, "does not exist"),
    ({"n": 1000}, openai.BadRequestError, "max_n"),
    ({"max_tokens": 10**6}, openai.BadRequestError, "max_tokens"),
    ({"extra_body": {"frobnicate": 1}}, openai.BadRequestError, "unrecognized request argument"),
    ({"extra_body": {"ttscale": {"strategy": "nope"}}}, openai.BadRequestError, "unknown strategy"),
    ({"extra_body": {"ttscale": {"strategy": "majority", "n": 10**5}}}, openai.BadRequestError,
     "max_samples"),
    ({"extra_body": {"ttscale": {"strategy": "auto", "budget_flops": 1e9}}},
     openai.BadRequestError, "--plan"),
    ({"extra_body": {"ttscale": {"strategy": "best_of_n", "scorer": "oracle"}},
      "messages": [{"role": "user", "content": "what is the capital of France?"}]},
     openai.BadRequestError, "built-in tasks"),
    ({"temperature": -1}, openai.BadRequestError, "temperature"),
])
def test_errors_are_openai_error_objects(client, kwargs, error, words):
    args = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "1+1"}],
            **kwargs}
    with pytest.raises(error) as e:
        client.chat.completions.create(**args)
    assert words in e.value.message
    assert set(e.value.body) >= {"message", "type", "code"}


def test_prompt_longer_than_the_context_is_a_400(client, engine):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="1" * (engine.context_length + 5),
                                  max_tokens=4)


def test_metrics_count_requests_tokens_and_flops(server, client):
    client.completions.create(model=MODEL, prompt="Q: 2+2\n", max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    assert 'ttscale_requests_total{endpoint="/v1/completions",status="200"}' in text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['ttscale_tokens_total{kind="completion"}'] > 0
    assert values["ttscale_flops_total"] > 0
    assert values['ttscale_request_duration_seconds_bucket{le="+Inf"}'] >= 1
    assert "ttscale_queue_depth 0" in text


def test_auto_answers_with_the_plan_under_the_budget(engine, random_model_dir, tmp_path):
    from ttscale.planner.allocate import Option
    from ttscale.planner.plan import Plan
    from ttscale.serve.auto import plan_runner

    # A plan whose only paid configuration is majority vote over 4 samples (no probe affordable).
    plan = Plan(model=MODEL, probe_samples=2, probe_cost=1e30, edges=[], bins=[[Option("probe", 0, 0)]],
                blind=[Option("none", 0.0, 0.0), Option("majority-4", 1.0, 0.5)],
                strategies={"majority-4": {"strategy": "majority", "params": {"n": 4},
                                           "source": "samples"}},
                sampling={"temperature": 1.0, "max_tokens": 8}, calibration={"bin_sizes": [1]})
    runner = plan_runner(str(plan.save(tmp_path / "plan.json")))
    with engine_server(engine, chat_template=chat_template_of(random_model_dir),
                       planner=runner) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.create(model=f"auto/{MODEL}", max_tokens=8,
                                      messages=[{"role": "user", "content": COUNTDOWN}],
                                      extra_body={"ttscale": {"budget_flops": 1e12}})
        t = r.model_extra["ttscale"]
        assert t["strategy"] == "auto" and t["config"] == "majority-4"
        assert r.usage.completion_tokens > 0 and 0 < t["flops"] <= 1e12
        with pytest.raises(openai.BadRequestError, match="budget_flops"):
            c.chat.completions.create(model=f"auto/{MODEL}", max_tokens=8,
                                      messages=[{"role": "user", "content": COUNTDOWN}])


def test_build_config_for_the_embedded_engine_and_bad_options(random_model_dir):
    from ttscale.errors import TTScaleError
    from ttscale.serve.build import ServeOptions, build_config

    cfg = build_config(ServeOptions(model=random_model_dir, api_keys=["k"]))
    assert cfg.api_keys == ["k"] and not cfg.upstream
    assert cfg.chat_template([{"role": "user", "content": "1+1"}]) == "Q: 1+1\n"
    with pytest.raises(TTScaleError, match="not both"):
        build_config(ServeOptions(model=random_model_dir, upstream=["http://127.0.0.1:1"]))
    with pytest.raises(TTScaleError, match="--upstream-params"):
        build_config(ServeOptions(upstream=["http://127.0.0.1:1"], upstream_model="m"))


def test_a_strategy_answer_can_be_streamed(client):
    stream = client.chat.completions.create(
        model=f"majority-3/{MODEL}", messages=[{"role": "user", "content": COUNTDOWN}],
        max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].model_extra["ttscale"]["strategy"] == "majority"
    assert chunks[-1].model_extra["ttscale"]["num_candidates"] == 3
    assert chunks[-1].usage.completion_tokens > 0
