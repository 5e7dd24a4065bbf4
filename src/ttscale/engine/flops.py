"""Forward FLOPs of a decoder (Kaplan et al. 2020): about 2·N + 2·n_layer·n_ctx·d_model per token."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What FLOP counting needs to know of a model."""

    n_params: int  # non-embedding parameters are what matter; we count all, as is common
    n_layer: int
    d_model: int

    def token_flops(self, position: int) -> float:
        """FLOPs of the forward pass of one token attending to `position` earlier tokens."""
        return 2.0 * self.n_params + 2.0 * self.n_layer * position * self.d_model

    def span_flops(self, start: int, count: int) -> float:
        """FLOPs of computing `count` tokens at positions start .. start+count-1."""
        if count <= 0:
            return 0.0
        positions_sum = count * start + count * (count - 1) // 2
        return 2.0 * self.n_params * count + 2.0 * self.n_layer * self.d_model * positions_sum
