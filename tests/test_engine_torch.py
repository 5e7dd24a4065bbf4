"""The torch engine against transformers (the reference), and its caching, sampling and errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ttscale.engine import HFGenerator, TorchEngine, load_generator
from ttscale.engine.sampling import make_params
from ttscale.errors import TTScaleError
from ttscale.models.family import CONTEXT, SIZES
from ttscale.models.registry import models_dir
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

PROMPTS = ["Q: 12+7*3\n", "Q: 8-2+9+6\n=6+9+6\n", "x"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _save_random(model, src_dir: str, out: Path) -> str:
    """Save a random transformers model with the tiny model's tokenizer."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(src_dir) / name).exists():
            shutil.copy(Path(src_dir) / name, out / name)
    return str(out)


@pytest.fixture(scope="module")
def qwen2_dir(random_model_dir, tmp_path_factory):
    """A random Qwen2: grouped-query attention, q/k/v biases, untied embeddings, rope_theta 1e6."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ttscale.models.family import VOCAB_SIZE

    torch.manual_seed(1)
    cfg = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=160,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, rope_theta=1e6, tie_word_embeddings=False,
                      initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.2)  # zero-initialised otherwise: make the biases matter
    return _save_random(model, random_model_dir, tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def mistral_dir(random_model_dir, tmp_path_factory):
    """A random Mistral whose sliding window (12) is shorter than the sequences generated."""
    from transformers import MistralConfig, MistralForCausalLM

    from ttscale.models.family import VOCAB_SIZE

    torch.manual_seed(2)
    cfg = MistralConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                        max_position_embeddings=256, sliding_window=12, initializer_range=0.1,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return _save_random(MistralForCausalLM(cfg), random_model_dir, tmp_path_factory.mktemp("mistral"))


@pytest.fixture(scope="module")
def engine(random_model_dir):
    return TorchEngine(random_model_dir)


def _assert_same_greedy(model_dir: str, max_tokens: int = 16):
    """Token ids in (transformers may pick another tokenizer class for a Qwen2 config)."""
    eng, hf = TorchEngine(model_dir), HFGenerator(model_dir)
    prompts = [eng.tokenize(p) for p in PROMPTS]
    reqs = [Req(p, SP(temperature=0, max_tokens=max_tokens, logprobs=True)) for p in prompts]
    ours = eng.generate(reqs)  # one batch: prompts of different lengths decoded together
    ref = hf.generate(reqs)
    for p, a, b in zip(PROMPTS, ours, ref):
        assert a.error is None and b.error is None
        ca, cb = a.completions[0], b.completions[0]
        assert ca.token_ids == cb.token_ids, f"prompt {p!r}"
        assert ca.finish_reason == cb.finish_reason
        assert ca.text == cb.text
        assert max(abs(x - y) for x, y in zip(ca.logprobs, cb.logprobs)) < 1e-4
        assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_greedy_matches_transformers_llama(random_model_dir):
    _assert_same_greedy(random_model_dir)
    eng, hf = TorchEngine(random_model_dir), HFGenerator(random_model_dir)
    assert all(eng.tokenize(p) == hf.tokenize(p) for p in PROMPTS)  # the shipped tokenizer, BOS added
    assert eng.tokenize("ab")[0] == 1


def test_greedy_matches_transformers_qwen2(qwen2_dir):
    _assert_same_greedy(qwen2_dir)


def test_greedy_matches_transformers_mistral_sliding_window(mistral_dir):
    _assert_same_greedy(mistral_dir, max_tokens=24)


@pytest.mark.parametrize("name", list(SIZES))
def test_greedy_matches_transformers_shipped(name):
    path = models_dir() / name
    if not (path / "config.json").exists():
        pytest.skip(f"shipped model {name} is not in {models_dir()} yet (still training)")
    _assert_same_greedy(str(path), max_tokens=32)


def test_prefix_cached_continuation_equals_uncached(random_model_dir, engine):
    ids = engine.tokenize(PROMPTS[0])
    first = engine.generate([Req(ids, SP(temperature=0, max_tokens=40))])[0].completions[0]
    cont_prompt = ids + first.token_ids[:20]
    cached = engine.generate([Req(cont_prompt, SP(temperature=0, max_tokens=20, logprobs=True))])[0]
    # the prompt and the generated text were computed before: only the last token is recomputed
    assert cached.usage.cached_tokens == len(cont_prompt) - 1
    assert cached.completions[0].token_ids == first.token_ids[20:40]
    plain = TorchEngine(random_model_dir, prefix_cache_bytes=0)
    uncached = plain.generate([Req(cont_prompt, SP(temperature=0, max_tokens=20, logprobs=True))])[0]
    assert uncached.usage.cached_tokens == 0
    assert uncached.completions[0].token_ids == cached.completions[0].token_ids
    assert max(abs(a - b) for a, b in zip(uncached.completions[0].logprobs,
                                          cached.completions[0].logprobs)) < 1e-5
    assert cached.usage.flops < uncached.usage.flops


def test_extending_a_prompt_computes_only_new_tokens(engine):
    base = "Q: 3*4+5*6-7\n"
    engine.generate([Req(base, SP(max_tokens=1, seed=0))])
    longer = base + "=12+5*6-7\n"
    res = engine.generate([Req(longer, SP(max_tokens=1, seed=0))])[0]
    assert res.usage.prompt_tokens == len(engine.tokenize(longer))
    assert res.usage.cached_tokens == len(engine.tokenize(base))


def test_n_samples_share_one_prefill(engine):
    engine.prefix.clear()
    res = engine.generate([Req("Q: 5+5\n", SP(n=3, temperature=0, max_tokens=12))])[0]
    single = engine.generate([Req("Q: 5+5\n", SP(temperature=0, max_tokens=12))])[0]
    assert [c.token_ids for c in res.completions] == [single.completions[0].token_ids] * 3
    L, s = res.usage.prompt_tokens, engine.shape
    assert res.usage.completion_tokens == sum(len(c.token_ids) + (c.finish_reason == "stop")
                                              for c in res.completions)
    expected = s.span_flops(0, L) + sum(s.span_flops(L, len(c.token_ids) + (c.finish_reason == "stop"))
                                        for c in res.completions)
    assert res.usage.flops == pytest.approx(expected)


def test_seeded_sampling_is_reproducible_and_batch_independent(random_model_dir, engine):
    p = SP(n=4, temperature=1.0, top_p=0.9, top_k=40, max_tokens=20, seed=7)
    alone = engine.generate([Req(PROMPTS[0], p)])[0]
    other = Req(PROMPTS[1], SP(n=3, temperature=0.7, max_tokens=30, seed=1))
    crowded = TorchEngine(random_model_dir, max_batch_size=3).generate([other, Req(PROMPTS[0], p)])[1]
    assert [c.token_ids for c in crowded.completions] == [c.token_ids for c in alone.completions]
    assert len({tuple(c.token_ids) for c in alone.completions}) > 1  # samples differ
    again = engine.generate([Req(PROMPTS[0], SP(n=4, temperature=1.0, top_p=0.9, top_k=40,
                                                 max_tokens=20, seed=8))])[0]
    assert [c.token_ids for c in again.completions] != [c.token_ids for c in alone.completions]


def test_top_k_one_is_greedy(engine):
    greedy = engine.generate([Req(PROMPTS[1], SP(temperature=0, max_tokens=15))])[0]
    topk = engine.generate([Req(PROMPTS[1], SP(temperature=1.5, top_k=1, max_tokens=15, seed=3))])[0]
    assert topk.completions[0].token_ids == greedy.completions[0].token_ids


def test_stop_strings_cut_exactly(engine):
    free = engine.generate([Req(PROMPTS[0], SP(temperature=1.0, max_tokens=60, seed=11))])[0]
    text = free.completions[0].text
    assert len(text) > 12
    for stop in (text[8:10], text[5], "\n"):
        res = engine.generate([Req(PROMPTS[0], SP(temperature=1.0, max_tokens=60, seed=11,
                                                  stop=[stop, "@@never@@"], logprobs=True))])[0]
        c = res.completions[0]
        if stop not in text:
            assert c.text == text
            continue
        assert c.text == text[:text.index(stop)]
        assert c.finish_reason == "stop"
        assert engine.detokenize(c.token_ids) == c.text  # one token per character here
        assert len(c.logprobs) == len(c.token_ids)


def test_prefix_cache_never_exceeds_its_bound(random_model_dir):
    probe = TorchEngine(random_model_dir, prefix_cache_bytes=0)
    bound = 50 * probe.prefix.token_bytes + 7
    eng = TorchEngine(random_model_dir, prefix_cache_bytes=bound)
    assert eng.prefix.capacity == 50
    for i in range(6):
        res = eng.generate([Req(f"Q: {i}*{i}+{i}\n", SP(n=2, temperature=1.0, max_tokens=25, seed=i))])
        assert res[0].error is None
        assert len(eng.prefix) <= 50 and eng.prefix.nbytes <= bound
    assert eng.prefix.evictions > 0
    # what is left still serves exact continuations
    ids = eng.tokenize(PROMPTS[1])
    a = eng.generate([Req(ids, SP(temperature=0, max_tokens=30))])[0].completions[0]
    b = eng.generate([Req(ids + a.token_ids[:10], SP(temperature=0, max_tokens=20))])[0]
    assert b.completions[0].token_ids == a.token_ids[10:30]
    assert len(eng.prefix) <= 50


def test_more_samples_than_rows(random_model_dir, engine):
    p = SP(n=5, temperature=1.0, max_tokens=10, seed=4)
    small = TorchEngine(random_model_dir, max_batch_size=2).generate([Req(PROMPTS[2], p)])[0]
    big = engine.generate([Req(PROMPTS[2], p)])[0]
    assert [c.token_ids for c in small.completions] == [c.token_ids for c in big.completions]
    assert small.usage.prompt_tokens == big.usage.prompt_tokens


def test_context_limit_ends_with_length(engine):
    ids = [1] + [20] * (engine.context_length - 6)
    res = engine.generate([Req(ids, SP(temperature=0, max_tokens=50))])[0]
    c = res.completions[0]
    assert res.error is None
    assert len(ids) + res.usage.completion_tokens <= engine.context_length
    assert c.finish_reason == "length" or res.usage.completion_tokens < 5


@pytest.mark.parametrize("params, prompt, fragment", [
    (SP(), "x" * (CONTEXT + 50), f"context is {CONTEXT}"),
    (SP(n=0), "x", "n=0"),
    (SP(n=5000), "x", "n=5000"),
    (SP(max_tokens=0), "x", "max_tokens=0"),
    (SP(max_tokens=10**6), "x", "max_tokens=1000000"),
    (SP(temperature=-1.0), "x", "temperature=-1.0"),
    (SP(top_p=0.0), "x", "top_p=0.0"),
    (SP(top_k=-3), "x", "top_k=-3"),
    (SP(top_logprobs=99), "x", "top_logprobs=99"),
    (SP(stop=[""]), "x", "stop"),
    (SP(), [1, 5, 10**6], "token id 1000000"),
    (SP(), [], "empty"),
])
def test_bad_request_fails_alone(engine, params, prompt, fragment):
    good = Req("Q: 1+1\n", SP(temperature=0, max_tokens=5))
    res = engine.generate([good, Req(prompt, params), good])
    assert res[1].error and fragment in res[1].error and not res[1].completions
    for r in (res[0], res[2]):
        assert r.error is None and len(r.completions) == 1
    assert res[0].completions[0].token_ids == res[2].completions[0].token_ids


def test_unknown_sampling_option_is_named():
    with pytest.raises(TTScaleError, match="unknown sampling option 'best_of'.*temperature"):
        make_params(temperature=0.5, best_of=3)
    assert make_params(n=2, stop="\n").n == 2


def test_top_logprobs(engine):
    res = engine.generate([Req(PROMPTS[0], SP(temperature=0, max_tokens=6, top_logprobs=3,
                                              logprobs=True))])[0]
    c = res.completions[0]
    assert len(c.top_logprobs) == len(c.token_ids)
    for lp, top in zip(c.logprobs, c.top_logprobs):
        assert len(top) == 3 and max(top.values()) == pytest.approx(lp, abs=1e-6)  # greedy = best


def test_load_generator_validates(random_model_dir):
    with pytest.raises(TTScaleError, match="unknown backend 'vllm'.*torch, hf"):
        load_generator(random_model_dir, backend="vllm")
    with pytest.raises(TTScaleError, match="unknown dtype 'int3'.*float32"):
        load_generator(random_model_dir, dtype="int3")
    with pytest.raises(TTScaleError, match="device"):
        load_generator(random_model_dir, device="tpu")
    with pytest.raises(TTScaleError, match="unknown model 'no-such-model'"):
        load_generator("no-such-model")
    g = load_generator(random_model_dir, backend="torch")
    assert g.context_length == CONTEXT and g.shape.n_layer == 4


def test_rope_scaling_is_refused(random_model_dir, tmp_path):
    for name in ("model.safetensors", *TOKENIZER_FILES):
        shutil.copy(Path(random_model_dir) / name, tmp_path / name)
    cfg = json.loads((Path(random_model_dir) / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TTScaleError, match="RoPE scaling 'linear'"):
        TorchEngine(tmp_path)


def test_bfloat16_runs_and_mostly_agrees(random_model_dir, engine):
    bf = TorchEngine(random_model_dir, dtype="bfloat16")
    res = bf.generate([Req(PROMPTS[0], SP(temperature=0, max_tokens=8, logprobs=True))])[0]
    ref = engine.generate([Req(PROMPTS[0], SP(temperature=0, max_tokens=8, logprobs=True))])[0]
    assert res.error is None and len(res.completions[0].token_ids) > 0
    assert res.completions[0].token_ids[0] == ref.completions[0].token_ids[0]
    assert abs(res.completions[0].logprobs[0] - ref.completions[0].logprobs[0]) < 0.05


def test_hf_backend_sampling_and_stops(random_model_dir):
    hf = HFGenerator(random_model_dir)
    p = SP(n=3, temperature=1.0, max_tokens=20, seed=5)
    a, b = hf.generate([Req(PROMPTS[0], p)])[0], hf.generate([Req(PROMPTS[0], p)])[0]
    assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    text = a.completions[0].text
    stop = text[4:6]
    cut = hf.generate([Req(PROMPTS[0], SP(n=3, temperature=1.0, max_tokens=20, seed=5,
                                          stop=[stop]))])[0].completions[0]
    assert cut.text == text[:text.index(stop)] and cut.finish_reason == "stop"
    bad = hf.generate([Req("x" * (CONTEXT + 50), SP()), Req("Q: 1\n", SP(max_tokens=2))])
    assert "context" in bad[0].error and bad[1].error is None
