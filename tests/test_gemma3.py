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
from ttscale.engine.paged import Plane, standalone
from ttscale.engine.loader import load_model, read_config
from ttscale.errors import TTScaleError
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

WINDOW = 8
PROMPTS = ["Q: 12+7*3-5+8*2-1+9\n", "Q: 8-2\n", "x"]  # the first is longer than the window


def _save_gemma(out: Path, **overrides) -> str:
    """A random Gemma 3 text model (both layer kinds, 1 KV head, head_dim != d/heads) saved with
    the family's tokenizer; norm weights are random too, so the (1 + w) form matters."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from ttscale.models.family import VOCAB_SIZE
    from ttscale.train.sft import save_model

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
    save_model(model, out)
    return str(out)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return _save_gemma(tmp_path_factory.mktemp("gemma3"))


@pytest.fixture(scope="module")
def softcap_dir(tmp_path_factory):
    """A final-logit cap small enough to change the result; attention softcapping set too, which
    transformers' Gemma3 (and llama.cpp) ignore, and so must the engine to give the same logits."""
    return _save_gemma(tmp_path_factory.mktemp("gemma3-softcap"),
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
    cache = standalone(Plane(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, torch.float32), 1, len(ids), block=5)
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


# --- GGUF: a small Gemma 3 written with the gguf package, read back as llama.cpp files are ----

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PIECES = SPECIALS + ["\u2581", *"abcdefghijklmnopqrstuvwxyz0123456789+=?.:", "\n", "\u2581t", "he",
                     "\u2581the", "\u2581a", "at", "\u2581c", "\u2581cat"]


def _write_gguf(model, path: Path) -> Path:
    """`model` (a transformers Gemma3ForCausalLM) as llama.cpp's converter writes it: norm scales
    stored as 1 + w, the projections quantized to Q8_0, the vocabulary in the metadata."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    from gguf.quants import quantize

    cfg = model.config
    w = GGUFWriter(str(path), "gemma3")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(cfg.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_token_list(PIECES)
    w.add_token_scores([0.0] * len(PIECES))
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(PIECES) - len(SPECIALS)))  # 3: control
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    from ttscale.engine.gguf import GEMMA3_TENSOR_NAMES

    ours = {v: k for k, v in GEMMA3_TENSOR_NAMES.items()}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            _, _, i, *mid, last = name.split(".")
            gname = f"blk.{i}.{ours['.'.join(mid)]}.{last}"
        arr = p.detach().float().numpy()
        if "norm" in name:
            w.add_tensor(gname, (arr + 1).astype(np.float32))
        else:
            w.add_tensor(gname, quantize(arr, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A random 7-layer Gemma 3 (the 7th layer sliding again) as a Q8_0 GGUF file."""
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(4)
    cfg = Gemma3TextConfig(vocab_size=len(PIECES), hidden_size=64, intermediate_size=96,
                           num_hidden_layers=7, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=256, sliding_window=WINDOW, max_position_embeddings=256,
                           initializer_range=0.1)
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return _write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf")


def test_gguf_loads_like_transformers_reads_it(gguf_file):
    """transformers' own GGUF reader (its dequantization, config and tokenizer) is the reference."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    from ttscale.engine.gguf import hf_dir

    eng = TorchEngine(str(gguf_file))
    assert eng.model_name == "tiny-gemma3.gguf"
    assert hf_dir(gguf_file) == gguf_file.with_suffix(".hf")
    assert eng.model.cfg.layer_types == ("sliding_attention",) * 5 + ("full_attention", "sliding_attention")
    kw = {"gguf_file": gguf_file.name}
    ref_tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), **kw)
    text = "the cat ate 12+3=15.\nthe"
    ids = eng.tokenize(text)
    assert ids == ref_tok(text)["input_ids"] and ids[0] == 2  # BOS first
    assert eng.detokenize(ids) == text
    ids = ids + ids  # 30 tokens: past the window of 8
    ref = Gemma3ForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    assert (_engine_logits(str(gguf_file), ids, False) - expected).abs().max().item() < 1e-4


def test_gguf_is_dequantized_once(gguf_file):
    from ttscale.engine.gguf import hf_dir

    weights = hf_dir(gguf_file) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    TorchEngine(str(gguf_file))
    assert weights.stat().st_mtime_ns == before


def test_gguf_of_another_architecture_or_no_gguf_is_one_line_error(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
    from gguf import GGUFWriter

    from ttscale.engine.gguf import hf_dir

    path = tmp_path / "other.gguf"
    w = GGUFWriter(str(path), "rwkv7")
    w.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(TTScaleError, match=r"^GGUF architecture 'rwkv7' .*accepted: gemma3"):
        hf_dir(path)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(TTScaleError, match="junk.gguf.*accepted: a llama.cpp .gguf model file"):
        hf_dir(junk)
