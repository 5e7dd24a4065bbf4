"""Gemma 3 (text) in plain PyTorch, behind the same forward as `model.Transformer`.

What differs from the Llama-style decoder: (1 + w) RMSNorm, also on queries and keys (QK-norm)
and after attention and MLP; GeGLU with tanh-approximated GELU; embeddings scaled by
sqrt(d_model); sliding-window layers interleaved with global ones, each kind with its own RoPE
base; queries scaled by query_pre_attn_scalar^-0.5; optional final-logit softcapping
(`attn_logit_softcapping` is ignored, as transformers' Gemma3 and llama.cpp ignore it: QK-norm
took its place in Gemma 3). The engine sees a plain causal model (`sliding_window` is None): the window of the
local layers is applied here, from the positions, so the KV cache keeps every position.
Numerics follow transformers' Gemma3ForCausalLM step by step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ttscale.engine.paged import PagedKV
from ttscale.engine.model import ModelConfig, _rotate_half
from ttscale.errors import TTScaleError, unknown

MODEL_TYPES = ("gemma3_text",)
LAYER_TYPES = ("sliding_attention", "full_attention")
ROPE_TYPES = ("default", "linear")


@dataclass(frozen=True)
class Gemma3Config(ModelConfig):
    """A `ModelConfig` plus what Gemma 3 adds (`sliding_window` stays None: see the module doc)."""

    layer_types: tuple[str, ...] = ()
    local_window: int = 4096            # positions a sliding-attention layer sees
    local_rope_theta: float = 10000.0
    rope_factor: float = 1.0            # linear RoPE scaling of the global layers
    query_scale: float = 256 ** -0.5    # query_pre_attn_scalar ** -0.5
    final_softcap: float | None = None


def _rope(cfg: dict, kind: str, legacy_theta: str, default: float) -> tuple[float, float]:
    """(theta, linear factor) of one layer kind, from rope_parameters or the older flat keys."""
    params = (cfg.get("rope_parameters") or {}).get(kind)
    if params is None:
        scaling = (cfg.get("rope_scaling") or {}) if kind == "full_attention" else {}
        params = {"rope_theta": cfg.get(legacy_theta, default), **scaling}
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in ROPE_TYPES:
        raise unknown(f"RoPE type of the {kind} layers", rope_type, ROPE_TYPES)
    factor = float(params.get("factor", 1.0)) if rope_type == "linear" else 1.0
    return float(params.get("rope_theta", default)), factor


def read_config(cfg: dict) -> Gemma3Config:
    """A `Gemma3Config` from the dict of a Gemma 3 text config.json (transformers' names)."""
    if cfg.get("model_type") not in MODEL_TYPES:
        raise unknown("model architecture", cfg.get("model_type"), MODEL_TYPES)
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise unknown("activation", act, ["gelu_pytorch_tanh"])
    if cfg.get("use_bidirectional_attention"):
        raise TTScaleError("use_bidirectional_attention=true is not supported by the torch engine; "
                           "accepted: false (a causal language model)")
    n, d, n_head = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
    pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
    types = tuple(cfg.get("layer_types") or
                  ("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)))
    bad = [t for t in types if t not in LAYER_TYPES]
    if bad or len(types) != n:
        raise unknown("layer type", bad[0] if bad else f"{len(types)} layer types for {n} layers",
                      LAYER_TYPES)
    theta, factor = _rope(cfg, "full_attention", "rope_theta", 1_000_000.0)
    local_theta, local_factor = _rope(cfg, "sliding_attention", "rope_local_base_freq", 10_000.0)
    if local_factor != 1.0:
        raise TTScaleError("RoPE scaling of the sliding-window layers is not supported by the torch "
                           "engine; accepted: default")
    return Gemma3Config(
        vocab_size=cfg["vocab_size"], d_model=d, n_layer=n, n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads") or n_head,
        head_dim=cfg.get("head_dim") or d // n_head, d_ff=cfg["intermediate_size"],
        rope_theta=theta, norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position=int(cfg.get("max_position_embeddings", 32768)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        qkv_bias=bool(cfg.get("attention_bias", False)), o_bias=bool(cfg.get("attention_bias", False)),
        layer_types=types, local_window=int(cfg.get("sliding_window") or 4096),
        local_rope_theta=local_theta, rope_factor=factor,
        query_scale=float(cfg.get("query_pre_attn_scalar", 256)) ** -0.5,
        final_softcap=cfg.get("final_logit_softcapping"),
    )


def state_dict(cfg: Gemma3Config, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map transformers' Gemma3ForCausalLM weight names onto `Gemma3`'s fused layout."""
    def take(name):
        if name not in w:
            raise TTScaleError(f"checkpoint lacks weight {name!r}")
        return w[name]

    sd = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    sd["lm_head.weight"] = sd["embed.weight"] if cfg.tie_embeddings else take("lm_head.weight")
    norms = {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
             "mlp_norm": "pre_feedforward_layernorm", "post_mlp_norm": "post_feedforward_layernorm",
             "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}
    for i in range(cfg.n_layer):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        sd[q + "wqkv.weight"] = torch.cat([take(a + f"{x}_proj.weight") for x in "qkv"])
        if cfg.qkv_bias:
            sd[q + "wqkv.bias"] = torch.cat([take(a + f"{x}_proj.bias") for x in "qkv"])
        sd[q + "wo.weight"] = take(a + "o_proj.weight")
        if cfg.o_bias:
            sd[q + "wo.bias"] = take(a + "o_proj.bias")
        sd[q + "w_gate_up.weight"] = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")])
        sd[q + "w_down.weight"] = take(m + "down_proj.weight")
        for ours, theirs in norms.items():
            sd[q + ours] = take(p + theirs + ".weight")
    return sd


def _norm(x: torch.Tensor, w1: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm; w1 is (1 + weight) in float32, applied before casting back."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w1).to(x.dtype)


class Gemma3Block(nn.Module):
    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        hd, h, kvh, d = cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.d_model
        self.wqkv = nn.Linear(d, (h + 2 * kvh) * hd, bias=cfg.qkv_bias)
        self.wo = nn.Linear(h * hd, d, bias=cfg.o_bias)
        self.w_gate_up = nn.Linear(d, 2 * cfg.d_ff, bias=False)
        self.w_down = nn.Linear(cfg.d_ff, d, bias=False)
        for name, dim in (("attn_norm", d), ("post_attn_norm", d), ("mlp_norm", d),
                          ("post_mlp_norm", d), ("q_norm", hd), ("k_norm", hd)):
            self.register_parameter(name, nn.Parameter(torch.zeros(dim)))


class Gemma3(nn.Module):
    """The Gemma 3 decoder; `forward` has the contract of `model.Transformer.forward`."""

    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Gemma3Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.zeros(cfg.d_model))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix is counted once

    def setup_rope(self, length: int) -> None:
        """cos/sin tables of both layer kinds for positions 0..length-1 (float32, as transformers)."""
        cfg, dev, dtype = self.cfg, self.embed.weight.device, self.embed.weight.dtype
        for kind, theta, factor in (("full_attention", cfg.rope_theta, cfg.rope_factor),
                                    ("sliding_attention", cfg.local_rope_theta, 1.0)):
            inv_freq = 1.0 / (theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64,
                                                     device=dev).float() / cfg.head_dim)) / factor
            freqs = torch.arange(length, device=dev).float()[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            self.rope[kind] = (emb.cos().to(dtype), emb.sin().to(dtype))

    def prepare(self) -> None:
        """Per-layer tensor handles, the (1 + w) norm scales in float32 and the embedding scale."""
        one = lambda w: 1.0 + w.float()  # noqa: E731
        self._layers = [
            (blk.wqkv.weight, blk.wqkv.bias, blk.wo.weight, blk.wo.bias, blk.w_gate_up.weight,
             blk.w_down.weight, one(blk.attn_norm), one(blk.post_attn_norm), one(blk.mlp_norm),
             one(blk.post_mlp_norm), one(blk.q_norm), one(blk.k_norm), kind)
            for blk, kind in zip(self.layers, self.cfg.layer_types)]
        self._final_norm = one(self.norm.weight)
        self._embed_scale = torch.tensor(self.cfg.d_model ** 0.5).to(self.embed.weight.dtype)

    def _local_mask(self, pos: torch.Tensor, kv_len: int, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The engine's causal mask narrowed to the last `local_window` positions of each query."""
        window = self.cfg.local_window
        if mask is None and kv_len <= window:
            return None
        keys = torch.arange(kv_len, device=pos.device)
        near = (keys[None, None, :] > pos[:, :, None] - window) | (pos >= kv_len)[:, :, None]
        causal = keys[None, None, :] <= pos[:, :, None] if mask is None else mask[:, 0]
        return (causal & near).unsqueeze(1)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, cache: PagedKV, row0: int,
                kv_len: int, mask: torch.Tensor | None, last: torch.Tensor | None = None,
                sparse=None) -> torch.Tensor:
        """Logits of new tokens; arguments as in `model.Transformer.forward` (`sparse` applies
        to the global layers; the local ones keep their window)."""
        cfg = self.cfg
        b, m = tokens.shape
        hd, h, kvh, eps, ff = cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.norm_eps, cfg.d_ff
        x = F.embedding(tokens, self.embed.weight) * self._embed_scale
        rope = {kind: (cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)) for kind, (cos, sin) in self.rope.items()}
        masks = {"full_attention": mask, "sliding_attention": self._local_mask(pos, kv_len, mask)}
        slots = cache.slots(row0, pos)
        for i, (wqkv, bqkv, wo, bo, wgu, wd, n1, n2, n3, n4, nq, nk, kind) in enumerate(self._layers):
            qkv = F.linear(_norm(x, n1, eps), wqkv, bqkv)
            q = _norm(qkv[..., :h * hd].view(b, m, h, hd), nq, eps)
            k = _norm(qkv[..., h * hd:(h + kvh) * hd].view(b, m, kvh, hd), nk, eps)
            qk = torch.cat([q, k], dim=2).transpose(1, 2)
            cos, sin = rope[kind]
            qk = qk * cos + _rotate_half(qk) * sin
            cache.write(i, slots, qk[:, h:].transpose(1, 2), qkv[..., (h + kvh) * hd:].view(b, m, kvh, hd))
            if sparse is not None and kind == "full_attention":
                y = sparse.attend(i, qk[:, :h], cache, cfg.query_scale)
            else:
                y = cache.attend(i, qk[:, :h], row0, b, kv_len, masks[kind], slots, cfg.query_scale)
            x = x + _norm(F.linear(y.transpose(1, 2).reshape(b, m, h * hd), wo, bo), n2, eps)
            gate, up = F.linear(_norm(x, n3, eps), wgu).split(ff, dim=-1)
            x = x + _norm(F.linear(F.gelu(gate, approximate="tanh") * up, wd), n4, eps)
        if last is not None:
            x = x[torch.arange(b, device=x.device), last]
        logits = F.linear(_norm(x, self._final_norm, eps), self.lm_head.weight)
        if cfg.final_softcap is not None:
            logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
        return logits.float()
