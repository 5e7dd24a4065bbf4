"""Gemma 3 in the torch engine against transformers' Gemma3ForCausalLM on small random models:
logits within 1e-4 (fp32) and the same greedy tokens, with prompts longer than the sliding
window. And the GGUF path on the real Gemma 3 270M file, where the `gguf` package and the file
are installed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ttscale.engine import HFGenerator, TorchEngine
from ttscale.engine.kv_cache import KVCache
from ttscale.engine.loader import load_model, read_config
from ttscale.errors import TTScaleError
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

WINDOW = 8
PROMPTS = ["Q: 12+7*3-5+8*2-1+9\n", "Q: 8-2\n", "x"]  # the first is longer than the window


def _save_gemma(src_dir: str, out: Path, **overrides) -> str:
    """A random Gemma 3 text model (both layer kinds, 1 KV head, head_dim != d/heads) saved with
    the tiny model's tokenizer; norm weights are random too, so the (1 + w) form matters."""
    import shutil

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig

    from ttscale.models.family import VOCAB_SIZE

    torch.manual_seed(3)
    kw = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=2, num_key_value_heads=1, head_dim=48, query_pre_attn_scalar=40,
              layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=WINDOW,
              max_position_embeddings=256, initializer_range=0.1, bos_token_id=1, eos_token_id=2,
              pad_token_id=0,
              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    kw.update(overrides)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(src_dir) / name, out / name)
    return str(out)


@pytest.fixture(scope="module")
def gemma_dir(random_model_dir, tmp_path_factory):
    return _save_gemma(random_model_dir, tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="module")
def softcap_dir(random_model_dir, tmp_path_factory):
    """A final-logit cap small enough to change the result; attention softcapping set too, which
    transformers' Gemma3 (and llama.cpp) ignore, and so must the engine to give the same logits."""
    return _save_gemma(random_model_dir, tmp_path_factory.mktemp("gemma3-softcap"),
                       attn_logit_softcapping=2.0, final_logit_softcapping=3.0)


def _reference_logits(model_dir: str, ids: list[int], attn: str = "sdpa") -> torch.Tensor:
    from transformers import Gemma3ForCausalLM

    ref = Gemma3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    ref.eval()
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float()


def _engine_logits(model_dir: str, ids: list[int], step_by_step: bool) -> torch.Tensor:
    """Logits of every position: one prefill under the engine's causal mask, or one token per
    forward with no mask (the decode path, where the model applies the window itself)."""
    loaded = load_model(model_dir)
    model, cfg = loaded.model, loaded.config
    model.setup_rope(len(ids) + 1)
    cache = KVCache(cfg.n_layer, 1, cfg.n_kv_head, len(ids), cfg.head_dim, torch.float32, "cpu")
    with torch.inference_mode():
        if not step_by_step:
            pos = torch.arange(len(ids))[None]
            mask = (torch.arange(len(ids))[None, None, :] <= pos[:, :, None]).unsqueeze(1)
            return model(torch.tensor([ids]), pos, cache, 0, len(ids), mask)[0]
        return torch.cat([model(torch.tensor([[t]]), torch.tensor([[i]]), cache, 0, i + 1, None)[0]
                          for i, t in enumerate(ids)])


@pytest.mark.parametrize("step_by_step", [False, True], ids=["prefill", "decode"])
def test_logits_match_transformers_past_the_window(gemma_dir, step_by_step):
    ids = list(range(3, 3 + 3 * WINDOW))  # 24 positions: the window is 8
    ours, ref = _engine_logits(gemma_dir, ids, step_by_step), _reference_logits(gemma_dir, ids)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_softcapping_matches_transformers(softcap_dir):
    ids = list(range(5, 5 + 2 * WINDOW))
    ref = _reference_logits(softcap_dir, ids, attn="eager")
    assert ref.abs().max().item() <= 3.0  # the final cap is in force
    assert (_engine_logits(softcap_dir, ids, False) - ref).abs().max().item() < 1e-4


def test_greedy_tokens_and_logprobs_match_transformers(gemma_dir):
    eng, hf = TorchEngine(gemma_dir), HFGenerator(gemma_dir)
    prompts = [eng.tokenize(p) for p in PROMPTS]
    assert len(prompts[0]) > WINDOW
    reqs = [Req(p, SP(temperature=0, max_tokens=20, logprobs=True)) for p in prompts]
    ours = eng.generate(reqs)  # one batch: prompts of different lengths decoded together
    ref = hf.generate(reqs)
    for a, b in zip(ours, ref):
        assert a.error is None and b.error is None
        ca, cb = a.completions[0], b.completions[0]
        assert ca.token_ids == cb.token_ids
        assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-4)


def test_sampled_rows_decode_alongside_greedy(gemma_dir):
    """n samples of a long prompt share its prefill; each sample is a valid continuation."""
    eng = TorchEngine(gemma_dir)
    out = eng.generate([Req(PROMPTS[0], SP(n=4, temperature=1.0, max_tokens=12, seed=7))])[0]
    assert out.error is None and len(out.completions) == 4
    assert all(len(c.token_ids) <= 12 for c in out.completions)
    assert out.usage.prompt_tokens == len(eng.tokenize(PROMPTS[0]))


def _config(tmp_path: Path, **changes) -> Path:
    from transformers import Gemma3TextConfig

    Gemma3TextConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8).save_pretrained(tmp_path)
    f = tmp_path / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))
    return tmp_path


def test_config_reads_layer_kinds_and_rope_bases(tmp_path):
    cfg = read_config(_config(tmp_path, num_hidden_layers=7, layer_types=None, sliding_window_pattern=6,
                              rope_parameters=None, rope_theta=5e5, rope_local_base_freq=2e4))
    assert cfg.layer_types == ("sliding_attention",) * 5 + ("full_attention", "sliding_attention")
    assert (cfg.rope_theta, cfg.local_rope_theta) == (5e5, 2e4)
    assert cfg.sliding_window is None  # the engine sees a causal model; the model applies windows


@pytest.mark.parametrize("changes, named", [
    ({"hidden_activation": "relu"}, "'relu'"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"layer_types": ["sliding_attention", "chunked_attention"]}, "'chunked_attention'"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e6}}}, "'yarn'"),
])
def test_unsupported_configs_are_one_line_errors(tmp_path, changes, named):
    with pytest.raises(TTScaleError) as e:
        read_config(_config(tmp_path, **changes))
    assert named in str(e.value) and "accepted" in str(e.value) and "\n" not in str(e.value)
