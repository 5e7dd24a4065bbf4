"""Load a Llama-, Qwen2-, Mistral- or Gemma 3-family checkpoint in Hugging Face format, or a
GGUF file, into `model.Transformer` (Gemma 3: `gemma3.Gemma3`).

Reads config.json, the safetensors weights (one file or an index of shards) and tokenizer.json;
fuses q/k/v and gate/up projections into one matrix each. Anything the plain decoder cannot
reproduce exactly (RoPE scaling, other activations) is refused with a clear error. A `.gguf`
file is dequantized once into a Hugging Face directory beside it (`engine.gguf`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from ttscale.engine import gemma3
from ttscale.engine.model import ModelConfig, Transformer
from ttscale.errors import TTScaleError, unknown

ARCHITECTURES = ("llama", "qwen2", "mistral", *gemma3.MODEL_TYPES)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: Transformer | gemma3.Gemma3
    tokenizer: Tokenizer
    eos_ids: tuple[int, ...]
    config: ModelConfig


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    return DTYPES[name]


def read_config(path: str | Path) -> ModelConfig:
    cfg = json.loads((Path(path) / "config.json").read_text())
    arch = cfg.get("model_type")
    if arch not in ARCHITECTURES:
        raise unknown("model architecture", arch, ARCHITECTURES)
    if arch in gemma3.MODEL_TYPES:
        return gemma3.read_config(cfg)
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise TTScaleError(f"RoPE scaling {rope_type!r} is not supported by the torch engine; "
                           "accepted: default (use backend='hf' for this model)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise unknown("activation", cfg["hidden_act"], ["silu"])
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise TTScaleError("qwen2 with use_sliding_window=true is not supported by the torch engine; "
                           "use backend='hf'")
    n_head = cfg["num_attention_heads"]
    d = cfg["hidden_size"]
    window = cfg.get("sliding_window") if arch == "mistral" else None
    return ModelConfig(
        vocab_size=cfg["vocab_size"], d_model=d, n_layer=cfg["num_hidden_layers"], n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads") or n_head,
        head_dim=cfg.get("head_dim") or d // n_head, d_ff=cfg["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position=int(cfg.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2" or bool(cfg.get("attention_bias", False)),
        o_bias=arch != "qwen2" and bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        sliding_window=int(window) if window else None,
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    if not (path / files[0]).exists():
        raise TTScaleError(f"no safetensors weights in {path}; accepted: model.safetensors or "
                           "model.safetensors.index.json with its shards")
    weights = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                weights[key] = f.get_tensor(key)
    return weights


def _state_dict(cfg: ModelConfig, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map Hugging Face weight names onto the fused layout of `Transformer`."""
    def take(name):
        if name not in w:
            raise TTScaleError(f"checkpoint lacks weight {name!r}")
        return w[name]

    sd = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    sd["lm_head.weight"] = sd["embed.weight"] if cfg.tie_embeddings else take("lm_head.weight")
    for i in range(cfg.n_layer):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        a = p + "self_attn."
        sd[q + "attn.wqkv.weight"] = torch.cat([take(a + f"{x}_proj.weight") for x in "qkv"])
        if cfg.qkv_bias:
            sd[q + "attn.wqkv.bias"] = torch.cat([take(a + f"{x}_proj.bias") for x in "qkv"])
        sd[q + "attn.wo.weight"] = take(a + "o_proj.weight")
        if cfg.o_bias:
            sd[q + "attn.wo.bias"] = take(a + "o_proj.bias")
        m = p + "mlp."
        sd[q + "mlp.w_gate_up.weight"] = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")])
        sd[q + "mlp.w_down.weight"] = take(m + "down_proj.weight")
        if cfg.mlp_bias:
            sd[q + "mlp.w_gate_up.bias"] = torch.cat([take(m + "gate_proj.bias"), take(m + "up_proj.bias")])
            sd[q + "mlp.w_down.bias"] = take(m + "down_proj.bias")
        sd[q + "attn_norm.weight"] = take(p + "input_layernorm.weight")
        sd[q + "mlp_norm.weight"] = take(p + "post_attention_layernorm.weight")
    return sd


def eos_ids(path: Path) -> tuple[int, ...]:
    """EOS token ids from config.json and generation_config.json (either may hold a list)."""
    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        f = path / name
        if f.exists():
            v = json.loads(f.read_text()).get("eos_token_id")
            ids += v if isinstance(v, list) else [v] if v is not None else []
    return tuple(dict.fromkeys(ids))


def load_model(path: str | Path, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """A checkpoint directory or a .gguf file, loaded in `dtype` on `device`."""
    path = Path(path)
    if path.suffix == ".gguf":
        from ttscale.engine.gguf import hf_dir

        path = hf_dir(path)
    cfg = read_config(path)
    tok_file = path / "tokenizer.json"
    if not tok_file.exists():
        raise TTScaleError(f"no tokenizer.json in {path}; the torch engine needs one")
    torch_dtype = parse_dtype(dtype)
    is_gemma = isinstance(cfg, gemma3.Gemma3Config)
    with torch.device("meta"):
        model = gemma3.Gemma3(cfg) if is_gemma else Transformer(cfg)
    state = (gemma3.state_dict if is_gemma else _state_dict)(cfg, _read_weights(path))
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model = model.to(device=device, dtype=torch_dtype).eval()
    model.prepare()
    return LoadedModel(model, Tokenizer.from_file(str(tok_file)), eos_ids(path), cfg)
