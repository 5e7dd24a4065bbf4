"""The Generator protocol: every strategy generates through it, whatever the backend."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ttscale.engine.flops import ModelShape
from ttscale.types import GenerationRequest, GenerationResult


@runtime_checkable
class Generator(Protocol):
    """A batch of requests in, one GenerationResult per request out (same order).

    An error in one request is reported in its own result (`error`), never raised for the
    batch. Usage counts prompt tokens, cached prompt tokens, completion tokens and FLOPs.
    """

    model_name: str
    shape: ModelShape
    context_length: int

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...
