"""Core data types shared by every layer: plain dataclasses, no behaviour beyond arithmetic."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One checkable question.

    `prompt` is the exact text given to a completion model; `answer` is the reference final
    answer; `solution` is a reference step-by-step solution when the task has one.
    """

    id: str
    task: str
    level: int
    question: str
    prompt: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Cost:
    """Compute spent, counted once: policy and verifier apart, plus wall time."""

    policy_tokens: int = 0  # prompt (uncached) + completion tokens the policy computed
    policy_cached_tokens: int = 0
    policy_completion_tokens: int = 0
    policy_flops: float = 0.0
    verifier_tokens: int = 0
    verifier_flops: float = 0.0
    wall_s: float = 0.0
    verifier_cpu_s: float = 0.0  # CPU time of verifiers that run no model (the checker)

    @property
    def tokens(self) -> int:
        return self.policy_tokens + self.verifier_tokens

    @property
    def flops(self) -> float:
        return self.policy_flops + self.verifier_flops

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(
            self.policy_tokens + other.policy_tokens,
            self.policy_cached_tokens + other.policy_cached_tokens,
            self.policy_completion_tokens + other.policy_completion_tokens,
            self.policy_flops + other.policy_flops,
            self.verifier_tokens + other.verifier_tokens,
            self.verifier_flops + other.verifier_flops,
            self.wall_s + other.wall_s,
            self.verifier_cpu_s + other.verifier_cpu_s,
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "policy_tokens": self.policy_tokens,
            "policy_cached_tokens": self.policy_cached_tokens,
            "policy_completion_tokens": self.policy_completion_tokens,
            "policy_flops": self.policy_flops,
            "verifier_tokens": self.verifier_tokens,
            "verifier_flops": self.verifier_flops,
            "tokens": self.tokens,
            "flops": self.flops,
            "wall_s": self.wall_s,
            "verifier_cpu_s": self.verifier_cpu_s,
        }


@dataclass
class SamplingParams:
    """How to sample; names follow the OpenAI API (and vLLM's `min_p`). `top_k=0`, `top_p=1`
    and `min_p=0` switch those off."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0  # how many alternatives per position, with logprobs=True
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (0 = off)


@dataclass
class GenerationRequest:
    """One prompt (text or token ids, the latter starting with BOS where the model uses one)."""

    prompt: str | list[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    logprobs: list[float] | None = None  # of each sampled token
    top_logprobs: list[dict[str, float]] | None = None  # per position: token text -> logprob


@dataclass
class Usage:
    """OpenAI's usage, plus FLOPs. `prompt_tokens` includes `cached_tokens`."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    cpu_s: float = 0.0  # CPU time of a verifier that runs no model (zero FLOPs)

    @property
    def computed_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.cached_tokens + other.cached_tokens,
                     self.completion_tokens + other.completion_tokens, self.flops + other.flops,
                     self.cpu_s + other.cpu_s)


@dataclass
class GenerationResult:
    """The answer to one request: n completions and their usage, or an error of its own."""

    completions: list[Completion]
    usage: Usage
    error: str | None = None
