"""The shipped model family: small Llama-architecture decoders, one config per size."""
from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig

from ttscale.models.tokenizer import SPECIALS, CHARS

VOCAB_SIZE = len(SPECIALS) + len(CHARS)
CONTEXT = 1024  # positions the family is built for: long-mode chains reach about 600 tokens


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int

    def config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=VOCAB_SIZE, hidden_size=self.d_model, intermediate_size=self.d_ff,
            num_hidden_layers=self.n_layer, num_attention_heads=self.n_head,
            num_key_value_heads=self.n_head, max_position_embeddings=CONTEXT,
            rope_theta=10000.0, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False,
        )


# Parameter counts span more than 16x (about 0.27M, 1.1M and 4.7M).
SIZES: dict[str, Size] = {
    "ttscale-tiny": Size("ttscale-tiny", d_model=64, n_layer=4, n_head=4, d_ff=256),
    "ttscale-small": Size("ttscale-small", d_model=128, n_layer=4, n_head=4, d_ff=512),
    "ttscale-base": Size("ttscale-base", d_model=192, n_layer=8, n_head=6, d_ff=768),
}
