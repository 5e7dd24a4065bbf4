"""Speculative decoding: greedy output identical to plain decoding, sampling distribution kept."""
from __future__ import annotations

import re

import pytest
import torch
from scipy.stats import chisquare

from ttscale.engine import TorchEngine
from ttscale.engine.sampling import RowParams
from ttscale.engine.speculative import NgramIndex, accept, parse_spec, target_probs
from ttscale.errors import TTScaleError
from ttscale.models.family import SIZES
from ttscale.models.registry import models_dir
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

PROMPTS = ["Q: 12+7*3\n", "Q: 8-2+9+6\n=6+9+6\n"]


def _greedy_pair(model_dir: str, spec: dict, max_tokens: int = 40):
    reqs = [Req(p, SP(n=2, temperature=0, max_tokens=max_tokens, logprobs=True)) for p in PROMPTS]
    plain = TorchEngine(model_dir).generate(reqs)
    eng = TorchEngine(model_dir, speculative=spec)
    return plain, eng.generate(reqs), eng


def _assert_identical(plain, spec):
    for a, b in zip(plain, spec):
        assert a.error is None and b.error is None
        for x, y in zip(a.completions, b.completions):
            assert x.token_ids == y.token_ids and x.text == y.text
            assert x.finish_reason == y.finish_reason
            assert max(abs(u - v) for u, v in zip(x.logprobs, y.logprobs)) < 1e-4


def test_self_draft_is_identical_and_accepts_everything(random_model_dir):
    plain, spec, eng = _greedy_pair(random_model_dir, {"draft": random_model_dir, "k": 3})
    _assert_identical(plain, spec)
    assert eng.spec_drafted > 0 and eng.spec_accepted >= 0.95 * eng.spec_drafted


@pytest.mark.parametrize("name", list(SIZES))
def test_speculative_greedy_identical_on_shipped_models(name):
    path = models_dir() / name
    if not (path / "config.json").exists():
        pytest.skip(f"shipped model {name} is not in {models_dir()}")
    plain, spec, eng = _greedy_pair(str(path), {"draft": "ngram", "k": 4}, max_tokens=64)
    _assert_identical(plain, spec)
    assert eng.spec_accepted > 0  # arith chains repeat themselves: lookup finds tokens
    if name != "ttscale-tiny" and (models_dir() / "ttscale-tiny" / "config.json").exists():
        _, drafted, eng = _greedy_pair(str(path), {"draft": "ttscale-tiny", "k": 4}, max_tokens=64)
        _assert_identical(plain, drafted)


def test_speculation_is_charged_its_flops():
    """Same tokens, more compute: the draft's forwards (its prompt included) and the verified
    positions thrown away count in each request's FLOPs, so speculation never looks free."""
    small, tiny = models_dir() / "ttscale-small", models_dir() / "ttscale-tiny"
    if not (small / "config.json").exists() or not (tiny / "config.json").exists():
        pytest.skip(f"shipped models are not in {models_dir()}")
    plain, spec, eng = _greedy_pair(str(small), {"draft": "ttscale-tiny", "k": 6}, max_tokens=64)
    _assert_identical(plain, spec)
    assert eng.spec_accepted < eng.spec_drafted  # some drafts were thrown away
    for a, b in zip(plain, spec):
        draft_prompt = eng.draft_shape.span_flops(0, b.usage.prompt_tokens)
        tokens = sum(len(c.token_ids) for c in b.completions)
        least_rounds = -(-tokens // (6 + 1))  # each round takes at most k + 1 tokens per row
        assert b.usage.flops >= a.usage.flops + draft_prompt + least_rounds * eng.draft_shape.token_flops(0)
    _, lookup, ng = _greedy_pair(str(small), {"draft": "ngram", "k": 4}, max_tokens=64)
    assert ng.spec_accepted < ng.spec_drafted
    assert sum(b.usage.flops for b in lookup) > sum(a.usage.flops for a in plain)


def _rows(a: int, temperature: float, top_k: int = 0) -> RowParams:
    return RowParams([temperature] * a, [1.0] * a, [top_k] * a, list(range(1, a + 1)), torch.device("cpu"))


@pytest.mark.parametrize("use_q", [True, False])
def test_acceptance_rule_keeps_the_target_distribution(use_q):
    """Chi-square: what a round emits first is distributed as p, whatever the draft q; the
    token after a kept draft is distributed as p at that position."""
    torch.manual_seed(0)
    a, k, v = 40000, 2, 6
    rp = _rows(a, temperature=0.8, top_k=5)
    logits = torch.randn(1, k + 1, v).mul(1.5).expand(a, k + 1, v).contiguous()
    p = target_probs(logits[:1], _rows(1, 0.8, 5))[0]  # [k + 1, V]; top_k drops one token
    steps = torch.zeros(a, dtype=torch.long)
    if use_q:  # a draft model's distributions, far from p, drafts drawn from them
        q = torch.softmax(torch.randn(k, v) * 2, -1)
        g = torch.Generator().manual_seed(1)
        drafts = torch.stack([torch.multinomial(q[i], a, replacement=True, generator=g)
                              for i in range(k)], 1)
        qa = q.expand(a, k, v)
    else:  # prompt lookup: one fixed proposal
        drafts, qa = torch.tensor([[1, 3]]).expand(a, k).contiguous(), None
    kept, toks = accept(logits, drafts, torch.full((a,), k), qa, rp, steps)
    first = toks[:, 0]
    counts = torch.bincount(first, minlength=v).float()
    support = p[0] > 0
    assert counts[~support].sum() == 0
    assert chisquare(counts[support], p[0][support] * a).pvalue > 1e-3
    after = (kept >= 1)  # the first draft was kept: the second token follows p[1]
    second = toks[after, 1]
    c2 = torch.bincount(second, minlength=v).float()
    assert c2[p[1] == 0].sum() == 0
    assert chisquare(c2[p[1] > 0], p[1][p[1] > 0] * after.sum()).pvalue > 1e-3
    greedy = accept(logits, drafts, torch.full((a,), k), qa, _rows(a, 0.0), steps)[1][:, 0]
    assert (greedy == logits[0, 0].argmax()).all()


def test_ngram_lookup_proposes_what_followed_the_latest_match():
    idx = NgramIndex(3)
    seq = [5, 1, 2, 3, 9, 1, 2, 3, 7, 8, 4, 1, 2]
    assert idx.propose(seq, 3) == [3, 7, 8]  # "1 2" last ended before index 7
    assert idx.propose(seq + [3], 2) == [7, 8]
    assert NgramIndex(2).propose([4, 5, 6], 3) == []


def test_sampled_speculation_with_stops_and_logprobs(random_model_dir):
    eng = TorchEngine(random_model_dir, speculative={"draft": random_model_dir, "k": 4})
    p = SP(n=3, temperature=1.0, max_tokens=50, seed=5, logprobs=True)
    a = eng.generate([Req(PROMPTS[0], p)])[0]
    b = eng.generate([Req(PROMPTS[0], p)])[0]
    assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]  # seeded
    text = a.completions[0].text
    stop = text[6:8]
    cut = eng.generate([Req(PROMPTS[0], SP(n=3, temperature=1.0, max_tokens=50, seed=5,
                                           stop=[stop], logprobs=True))])[0].completions[0]
    assert cut.text == text[:text.index(stop)] and cut.finish_reason == "stop"
    assert len(cut.logprobs) == len(cut.token_ids)
    assert all(len(c.token_ids) <= 50 for c in a.completions)


@pytest.mark.parametrize("spec, fragment", [
    ({"draft": "ngram", "k": 0}, "speculative k=0"),
    ({"draft": "", "k": 2}, "speculative draft"),
    ({"draft": "ngram", "depth": 2}, "unknown speculative option 'depth'"),
    ("ngram", "not an object"),
])
def test_bad_speculative_options_are_named(spec, fragment):
    with pytest.raises(TTScaleError, match=fragment):
        parse_spec(spec)


def test_speculative_flag_parses_pairs_and_json():
    from ttscale.cli.options import generator_options, parse_speculative

    want = {"draft": "ngram", "k": 3, "ngram": 3}
    assert parse_speculative("--speculative", "draft=ngram,k=3") == want
    assert parse_speculative("--speculative", '{"draft": "ngram", "k": 3}') == want
    assert parse_speculative("--speculative", None) is None
    assert generator_options("torch", [], None, None, None, None,
                             speculative="draft=ngram,k=3") == {"speculative": want}
    for text, named in (("draft=ngram,k=99", "speculative k=99"), ("k=3", "'k=3' names no draft"),
                        ("draft", "'draft' is not key=value"), ("{draft", "is not valid JSON"),
                        ("draft=ngram,width=2", "speculative option 'width'")):
        with pytest.raises(TTScaleError, match=re.escape(named)):
            parse_speculative("--speculative", text)


@pytest.mark.parametrize("args, named", [
    (["eval", "--model", "ttscale-tiny", "--speculative", "draft=ngram,k=0"], "speculative k=0"),
    (["solve", "--model", "ttscale-tiny", "--speculative", "k=4"], "'k=4' names no draft"),
    (["sweep", "--model", "ttscale-tiny", "--speculative", "draft=ngram,k=x"], "speculative k='x'"),
    (["serve", "--model", "ttscale-tiny", "--speculative", "draft"], "is not key=value"),
    (["solve", "--model", "ttscale-tiny", "--backend", "hf", "--speculative", "draft=ngram"],
     "--speculative applies only to --backend torch"),
    (["serve", "--upstream", "http://127.0.0.1:9", "--upstream-model", "m", "--speculative",
      "draft=ngram"], "--speculative applies only to the embedded engine")])
def test_bad_speculative_flag_is_one_line_exit_2(args, named, monkeypatch, capsys, tmp_path):
    from cli_helpers import run_cli

    code, _, err = run_cli(monkeypatch, capsys, *args, *(["--out", str(tmp_path / "s")]
                                                       if args[0] == "sweep" else []))
    assert code == 2 and "\n" not in err and named in err, err


def test_served_greedy_answers_are_the_same_with_speculation():
    import httpx

    from ttscale.serve import create_app
    from ttscale.serve.build import ServeOptions, build_config
    from ttscale.serve.runner import ServerThread

    body = {"model": "ttscale-small", "prompt": "Think: 57*8+13\n", "temperature": 0.0, "max_tokens": 80}
    texts = []
    for spec in (None, {"draft": "ttscale-tiny", "k": 4}):
        cfg = build_config(ServeOptions(model="ttscale-small", speculative=spec))
        with ServerThread(create_app(cfg)) as s:
            r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        texts.append(r.json()["choices"][0]["text"])
    assert cfg.generator.spec_drafted > 0  # the second server did speculate
    assert texts[1] == texts[0] and len(texts[0]) > 20
