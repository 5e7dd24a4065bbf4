"""A GGUF file (llama.cpp's format) as a Hugging Face directory: dequantized once, then cached.

`hf_dir(path)` returns a directory holding config.json, generation_config.json,
model.safetensors (every tensor dequantized to float32 by the `gguf` package) and tokenizer.json
(built from the file's own vocabulary by transformers' GGUF tokenizer conversion). It lives
beside the file (`name.gguf` -> `name.hf/`), or under `$TTSCALE_CACHE_DIR` (default
~/.cache/ttscale/gguf) where the file's folder is read-only, and is rebuilt when the file's
size or modification time changes. Architectures: gemma3 (the torch engine's Gemma 3).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ttscale.errors import TTScaleError

ARCHITECTURES = ("gemma3",)
INSTALL_HINT = "pip install gguf (or 'ttscale[gguf]')"
GEMMA3_TENSOR_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_dir_for(path: Path) -> Path:
    """Where the Hugging Face form of the GGUF file `path` is kept."""
    if os.access(path.resolve().parent, os.W_OK):
        return path.with_suffix(".hf")
    root = Path(os.environ.get("TTSCALE_CACHE_DIR") or Path.home() / ".cache/ttscale") / "gguf"
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return root / f"{path.stem}-{digest}"


def hf_dir(path: str | Path) -> Path:
    """The cached Hugging Face directory of a GGUF file, made on first use."""
    path = Path(path)
    if not path.is_file():
        raise TTScaleError(f"GGUF file {str(path)!r} does not exist; accepted: a .gguf model file")
    out = cache_dir_for(path)
    stamp_file = out / "gguf_source.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == _source_stamp(path):
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        convert(path, tmp)
        (tmp / "gguf_source.json").write_text(json.dumps(_source_stamp(path)))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise TTScaleError(f"reading {path.name} needs the gguf package; {INSTALL_HINT}") from None
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise TTScaleError(f"{str(path)!r} is not a readable GGUF file ({e}); accepted: a llama.cpp "
                           ".gguf model file") from None


def _meta(reader) -> dict:
    """Scalar and string metadata (long arrays such as the vocabulary are left out)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and len(field.data) > 1:
            continue
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field this gguf version cannot decode is not needed
            continue
    return out


def gemma3_config(meta: dict, vocab_size: int, tied: bool) -> dict:
    """transformers' Gemma3TextConfig fields from gemma3.* metadata; what GGUF does not store
    (local RoPE base 10000, one global layer in 6, query scale 1/sqrt(head_dim)) is set as
    llama.cpp sets it; newer files may store the first two (rope.freq_base_swa,
    attention.sliding_window_pattern as a period or one flag per layer)."""
    g = lambda k, default=None: meta.get(f"gemma3.{k}", default)  # noqa: E731
    head_dim = int(g("attention.key_length"))
    full = {"rope_type": "default", "rope_theta": float(g("rope.freq_base", 1_000_000.0))}
    if g("rope.scaling.type") == "linear":
        full.update(rope_type="linear", factor=float(g("rope.scaling.factor")))
    n = int(g("block_count"))
    pattern = g("attention.sliding_window_pattern", 6)
    swa = [bool(x) for x in pattern] if isinstance(pattern, list) else \
        [(i + 1) % int(pattern) != 0 for i in range(n)]
    eos = [meta["tokenizer.ggml.eos_token_id"]] + (
        [meta["tokenizer.ggml.eot_token_id"]] if "tokenizer.ggml.eot_token_id" in meta else [])
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": vocab_size, "hidden_size": int(g("embedding_length")),
        "intermediate_size": int(g("feed_forward_length")), "num_hidden_layers": n,
        "num_attention_heads": int(g("attention.head_count")),
        "num_key_value_heads": int(g("attention.head_count_kv")), "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim, "rms_norm_eps": float(f'{g("attention.layer_norm_rms_epsilon"):.7g}'),  # float32 -> 1e-06
        "max_position_embeddings": int(g("context_length")),
        "sliding_window": int(g("attention.sliding_window")),
        "layer_types": ["sliding_attention" if s else "full_attention" for s in swa],
        "rope_parameters": {"full_attention": full, "sliding_attention": {
            "rope_type": "default", "rope_theta": float(g("rope.freq_base_swa", 10_000.0))}},
        "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": g("final_logit_softcapping"),
        "tie_word_embeddings": tied, "torch_dtype": "float32",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": eos if len(eos) > 1 else eos[0],
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


def _hf_name(name: str) -> str:
    """transformers' name of a gemma3 GGUF tensor."""
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in GEMMA3_TENSOR_NAMES:
        return f"model.layers.{parts[1]}.{GEMMA3_TENSOR_NAMES[parts[2]]}.{parts[3]}"
    raise TTScaleError(f"GGUF tensor {name!r} has no place in a Gemma 3 model")


def convert(path: Path, out: Path) -> None:
    """Write the Hugging Face form of the GGUF file `path` into the directory `out`."""
    import numpy as np
    import torch
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    reader = _reader(path)
    meta = _meta(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise TTScaleError(f"GGUF architecture {arch!r} is not supported by the torch engine; accepted: "
                           f"{', '.join(ARCHITECTURES)} (backend='hf' reads other GGUF files)")
    weights = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))
        w = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: the reader's memory map is read-only
        if t.name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp's converter stores Gemma's (1 + w) norm scales
        weights[_hf_name(t.name)] = w
    tied = "lm_head.weight" not in weights
    cfg = gemma3_config(meta, weights["model.embed_tokens.weight"].shape[0], tied)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _save_tokenizer(path, out)


def _save_tokenizer(path: Path, out: Path) -> None:
    """tokenizer.json (and tokenizer_config.json) from the vocabulary inside the GGUF file."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.save_pretrained(str(out))
    if not (out / "tokenizer.json").exists():
        raise TTScaleError(f"could not build a tokenizer.json from {path.name}")
