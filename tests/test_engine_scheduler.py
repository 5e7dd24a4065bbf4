"""The torch engine's step scheduler: requests join a running batch, stream, and cancel."""
from __future__ import annotations

import threading

import pytest

from ttscale.engine import TorchEngine
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

LONG = Req("Q: 12+7*3-4\n", SP(n=3, temperature=0.8, max_tokens=40, seed=3))
LATE = Req("Q: 8-2+9+6\n", SP(n=2, temperature=0, max_tokens=25, logprobs=True))


@pytest.fixture(scope="module")
def engine(random_model_dir):
    return TorchEngine(random_model_dir)


def _tokens(result):
    return [c.token_ids for c in result.completions]


def test_request_submitted_mid_batch_joins_next_step_and_matches_alone(engine, random_model_dir):
    alone_late = TorchEngine(random_model_dir).generate([LATE])[0]
    alone_long = TorchEngine(random_model_dir).generate([LONG])[0]
    first = engine.submit(LONG)
    for _ in range(5):
        engine.step()
    # a step admits (prefill samples a first token) and decodes: 3 rows, 2 tokens, then 1 a step
    assert sum(len(t) for _, t in first.poll()) == 3 * 6
    late = engine.submit(LATE)
    engine.step()
    joined = late.poll()  # admitted and sampled within that one step, while LONG still runs
    assert sorted(j for j, _ in joined) == [0, 1] and all(len(t) == 2 for _, t in joined)
    assert not first.done and engine.has_work()
    while engine.step():
        pass
    assert first.done and late.done and not engine.has_work()
    assert _tokens(late.result) == _tokens(alone_late) and late.result.error is None
    assert _tokens(first.result) == _tokens(alone_long)  # seeded samples ignore their batch
    assert max(abs(a - b) for a, b in zip(late.result.completions[0].logprobs,
                                          alone_late.completions[0].logprobs)) < 1e-4


def test_polled_tokens_add_up_to_the_completions(engine):
    h = engine.submit(Req("Q: 3*4+5\n", SP(n=2, temperature=1.0, max_tokens=30, seed=9)))
    streamed = {0: [], 1: []}
    while engine.step():
        for j, toks in h.poll():
            streamed[j] += toks
    for j, toks in h.poll():
        streamed[j] += toks
    for j, c in enumerate(h.result.completions):
        ended_on_eos = c.finish_reason == "stop" and len(streamed[j]) == len(c.token_ids) + 1
        assert streamed[j][:len(c.token_ids)] == c.token_ids
        assert len(streamed[j]) == len(c.token_ids) or ended_on_eos


def test_polled_logprobs_are_the_completions(engine):
    """poll_tokens hands out each token with the logprob and alternatives its Completion ends
    up with (EOS, dropped from the Completion, may come last)."""
    h = engine.submit(Req("Q: 3*4+5\n", SP(n=2, temperature=1.0, max_tokens=30, seed=9,
                                            logprobs=True, top_logprobs=2)))
    got = {j: ([], [], []) for j in range(2)}
    polls = 0
    while True:
        working = engine.step()
        for t in h.poll_tokens():
            polls += 1
            assert len(t.ids) == len(t.logprobs) == len(t.top_logprobs)
            for acc, new in zip(got[t.j], (t.ids, t.logprobs, t.top_logprobs)):
                acc += new
        if not working:
            break
    assert polls > 2  # handed out as sampled, not at the end
    for j, c in enumerate(h.result.completions):
        ids, lps, tops = got[j]
        k = len(c.token_ids)
        assert (ids[:k], lps[:k], tops[:k]) == (c.token_ids, c.logprobs, c.top_logprobs)
        assert len(ids) - k in (0, 1) and all(len(t) == 2 for t in tops)


def test_submit_from_other_threads_while_a_driver_runs(engine):
    reqs = [Req(f"Q: {i}+{i}*2\n", SP(temperature=0, max_tokens=20)) for i in range(4)]
    expected = [_tokens(r) for r in engine.generate(reqs)]
    stop = threading.Event()
    driver = threading.Thread(target=engine.run_loop, args=(stop,))
    driver.start()
    try:
        results = [None] * len(reqs)

        def client(i):
            results[i] = engine.submit(reqs[i]).wait(60)

        clients = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
        for c in clients:
            c.start()
        for c in clients:
            c.join(60)
        concurrent = engine.generate(reqs)  # steps the batch the driver steps, under its lock
    finally:
        stop.set()
        driver.join(10)
    assert [_tokens(r) for r in results] == expected
    assert [_tokens(r) for r in concurrent] == expected


def test_cancel_drops_a_request_and_spares_the_others(engine):
    keep = engine.submit(Req("Q: 1+2\n", SP(temperature=0, max_tokens=30)))
    gone = engine.submit(Req("Q: 7*7\n", SP(n=4, temperature=1.0, max_tokens=200, seed=1)))
    waiting = engine.submit(Req("Q: 2+2\n", SP(temperature=0, max_tokens=5)))
    waiting.cancel()
    for _ in range(3):
        engine.step()
    gone.cancel()
    while engine.step():
        pass
    assert gone.result.error == "cancelled" and waiting.result.error == "cancelled"
    alone = engine.generate([Req("Q: 1+2\n", SP(temperature=0, max_tokens=30))])[0]
    assert keep.result.error is None and _tokens(keep.result) == _tokens(alone)
    assert not engine.has_work() and not engine._batch.rows


def test_bad_request_is_done_at_submit(engine):
    h = engine.submit(Req("x", SP(n=0)))
    assert h.done and "n=0" in h.result.error and not engine.has_work()
