"""Request and response bodies of the OpenAI API subset the server speaks, plus `ttscale`.

Requests are validated by these models (an unknown field is a 400 naming it, as OpenAI does);
responses are plain dicts built by the helpers below so that they match OpenAI's shape exactly.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TTScaleOptions(BaseModel):
    """The `ttscale` object of a request (send it with the openai client's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    strategy: str | None = Field(None, description="A strategy name, or 'auto' for the plan.")
    n: int | None = Field(None, ge=1, description="Samples the strategy may draw.")
    scorer: str | None = Field(None, description="Scorer: oracle (built-in tasks only), ...")
    budget_flops: float | None = Field(None, gt=0, description="FLOP budget of the request.")
    return_candidates: bool = Field(False, description="Return every candidate and its score.")
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=lambda s: s.update(_params_schema()),
        description="More fields of the strategy's params class (one typed object per "
                    "strategy, see `ttscale.serve.params`); values may tighten the server's "
                    "limits, never widen them.")
    effort: str | None = Field(None, description="Thinking effort: 'low' (short chains) or "
                               "'high' (long, step-checkable chains; built-in tasks only).")

    @field_validator("effort")
    @classmethod
    def _effort(cls, v: str | None) -> str | None:
        from ttscale.tasks.effort import check_effort

        return None if v is None else check_effort(v)


def _params_schema() -> dict[str, Any]:
    """`ttscale.params` in the OpenAPI document: any one strategy's typed parameters."""
    from ttscale.serve.params import params_schemas

    return {"anyOf": list(params_schemas().values())}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=512)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="vLLM's extension; 0 = off.")
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    ttscale: TTScaleOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 8 or any(not s for s in stops):
            raise ValueError("stop takes at most 8 non-empty strings")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Common):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    return_token_ids: bool = Field(False, description="vLLM's extension: token ids per choice.")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape; llama.cpp's `content` is accepted too)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = Field(None, max_length=1_000_000)
    content: str | None = Field(None, max_length=1_000_000)
    add_special_tokens: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int] = Field(..., max_length=1_000_000)


# -- responses --------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_body(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def completion_body(rid: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any],
                    extra: dict[str, Any] | None) -> dict[str, Any]:
    body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage, "system_fingerprint": None}
    if extra is not None:
        body["ttscale"] = extra
    return body


def chat_body(rid: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any],
              extra: dict[str, Any] | None) -> dict[str, Any]:
    body = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage, "system_fingerprint": None}
    if extra is not None:
        body["ttscale"] = extra
    return body
