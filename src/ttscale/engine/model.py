"""A plain-PyTorch decoder for Llama-, Qwen2- and Mistral-family checkpoints (gpt-fast style).

One forward serves prefill and decode: each row of the batch carries its own positions, writes
its keys and values into its blocks of the paged KV cache (`engine.paged`) at those positions
and attends, under a mask, to its own earlier positions. Numerics follow transformers' implementation step by step (RMSNorm
in float32, rotate-half RoPE), so greedy decoding matches it token for token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ttscale.engine.paged import PagedKV


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, read from a Hugging Face config.json by `engine.loader`."""

    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    d_ff: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_position: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None  # attend to at most this many positions (Mistral)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms(x, self.weight, self.eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hd, h, kvh = cfg.head_dim, cfg.n_head, cfg.n_kv_head
        self.wqkv = nn.Linear(cfg.d_model, (h + 2 * kvh) * hd, bias=cfg.qkv_bias)
        self.wo = nn.Linear(h * hd, cfg.d_model, bias=cfg.o_bias)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=cfg.mlp_bias)
        self.w_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class Transformer(nn.Module):
    """The decoder. `forward` computes new tokens of a contiguous range of block-table rows."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope_cos: torch.Tensor | None = None
        self.rope_sin: torch.Tensor | None = None

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix is counted once

    def setup_rope(self, length: int) -> None:
        """cos/sin tables for positions 0..length-1, computed in float32 as transformers does."""
        cfg, dev = self.cfg, self.embed.weight.device
        inv_freq = 1.0 / (cfg.rope_theta ** (
            torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=dev).float() / cfg.head_dim))
        freqs = torch.arange(length, device=dev).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = self.embed.weight.dtype
        self.rope_cos, self.rope_sin = emb.cos().to(dtype), emb.sin().to(dtype)

    def prepare(self) -> None:
        """Cache plain tensor handles per layer: the forward skips nn.Module dispatch."""
        self._layers = [
            (blk.attn_norm.weight, blk.attn.wqkv.weight, blk.attn.wqkv.bias, blk.attn.wo.weight,
             blk.attn.wo.bias, blk.mlp_norm.weight, blk.mlp.w_gate_up.weight, blk.mlp.w_gate_up.bias,
             blk.mlp.w_down.weight, blk.mlp.w_down.bias)
            for blk in self.layers]

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, cache: PagedKV, row0: int,
                kv_len: int, mask: torch.Tensor | None, last: torch.Tensor | None = None,
                sparse=None) -> torch.Tensor:
        """Logits of new tokens.

        tokens, pos: [B, M] token ids and their positions, for block-table rows row0 .. row0+B-1
        of `cache` (padding tokens carry position `cache.scratch`: they write to the scratch
        block, which is never attended to).
        mask: [B, 1, M, kv_len] bool, True where a query may attend to a cache position; None
        when every query may see all kv_len positions.
        last: [B] index in 0..M-1 of the token whose logits are wanted (default: every token).
        sparse: a decode step's block-sparse attention (`engine.sparse.SparseStep`, M = 1,
        row0 = 0), or None for dense attention.
        """
        cfg = self.cfg
        b, m = tokens.shape
        hd, h, kvh, eps, ff = cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.norm_eps, cfg.d_ff
        x = F.embedding(tokens, self.embed.weight)
        cos = self.rope_cos[pos].unsqueeze(1)
        sin = self.rope_sin[pos].unsqueeze(1)
        slots = cache.slots(row0, pos)
        for i, (n1, wqkv, bqkv, wo, bo, n2, wgu, bgu, wd, bd) in enumerate(self._layers):
            qkv = F.linear(_rms(x, n1, eps), wqkv, bqkv)
            qk = qkv[..., :(h + kvh) * hd].view(b, m, h + kvh, hd).transpose(1, 2)
            qk = qk * cos + _rotate_half(qk) * sin
            cache.write(i, slots, qk[:, h:].transpose(1, 2), qkv[..., (h + kvh) * hd:].view(b, m, kvh, hd))
            if sparse is None:
                y = cache.attend(i, qk[:, :h], row0, b, kv_len, mask, slots)
            else:
                y = sparse.attend(i, qk[:, :h], cache)
            x = x + F.linear(y.transpose(1, 2).reshape(b, m, h * hd), wo, bo)
            gate, up = F.linear(_rms(x, n2, eps), wgu, bgu).split(ff, dim=-1)
            x = x + F.linear(F.silu(gate) * up, wd, bd)
        if last is not None:
            x = x[torch.arange(b, device=x.device), last]
        return F.linear(_rms(x, self.norm.weight, eps), self.lm_head.weight).float()
