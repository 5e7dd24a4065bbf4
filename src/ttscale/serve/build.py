"""From options to a running server: the backend (embedded engine or upstreams), keys, plan.

`serve(ServeOptions(...))` is what `ttscale serve` runs; `build_config` is the same without
starting anything (tests and `ttscale bench serve` use it).
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from ttscale.errors import TTScaleError
from ttscale.serve.app import ServeConfig, create_app
from ttscale.serve.auth import load_keys
from ttscale.serve.errors import APIError
from ttscale.serve.limits import Limits

log = logging.getLogger("ttscale.serve")


@dataclass
class ServeOptions:
    """Everything `ttscale serve` takes; see its --help for each field."""

    model: str | None = None  # shipped name or directory; default: the largest shipped model
    upstream: list[str] = field(default_factory=list)  # base URLs of OpenAI-compatible servers
    upstream_model: str | None = None  # the model's name there (default: its first model)
    upstream_params: int = 0  # shape of the upstream model, for FLOPs ...
    upstream_layers: int = 0
    upstream_d_model: int = 0
    upstream_shape: str | None = None  # ... or read from this local checkpoint
    upstream_chat: bool = False  # strategies sample through the upstream's chat endpoint
    upstream_api_key: str | None = None
    upstream_timeout: float | None = None  # seconds per upstream call (default: request timeout)
    upstream_max_retries: int | None = None  # retries of a failed upstream call (default: 4)
    api_keys: list[str] = field(default_factory=list)  # prefer api_key_files or $TTSCALE_API_KEY
    api_key_files: list[str] = field(default_factory=list)  # one key per line
    host: str = "127.0.0.1"
    port: int = 8000
    plan: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    kv_memory: int | None = None  # bytes for the embedded engine's decoding KV cache
    sparse_attention: str | None = None  # the embedded engine's block-sparse decode attention
    speculative: dict | None = None  # the embedded engine's speculative decoding {"draft", "k"}
    limits: Limits = field(default_factory=Limits)
    access_log: bool = False


def default_model() -> str:
    """The largest model of the shipped family (a policy trained from scratch; a shipped child,
    such as ttscale-base-long, is served only when named)."""
    from ttscale.models.registry import family_models, models_dir

    shipped = [m for m in family_models() if m.name.startswith("ttscale-")]
    if not shipped:
        raise TTScaleError(f"no shipped model in {models_dir()}; pass --model DIR or --upstream URL")
    return shipped[-1].path


def _chat_template(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tok, "chat_template", None):
        def refuse(_: list[dict[str, str]]) -> str:
            raise APIError(400, "this model has no chat template; use /v1/completions",
                           code="no_chat_template")
        return refuse
    return lambda messages: tok.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=True)


def _upstream_generator(o: ServeOptions) -> Any:
    import httpx

    from ttscale.engine.openai_backend import OpenAIGenerator, normalize_base_url, shape_of_checkpoint

    name = o.upstream_model
    if name is None:
        url = normalize_base_url(o.upstream[0]) + "/models"
        headers = {"Authorization": f"Bearer {o.upstream_api_key}"} if o.upstream_api_key else {}
        try:
            data = httpx.get(url, headers=headers, timeout=10).raise_for_status().json()
            name = data["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise TTScaleError(f"could not read the model name from {url} ({e}); pass "
                               "--upstream-model NAME") from None
    if o.upstream_shape:
        s = shape_of_checkpoint(o.upstream_shape)
        params, layers, d = s.n_params, s.n_layer, s.d_model
    else:
        params, layers, d = o.upstream_params, o.upstream_layers, o.upstream_d_model
    if min(params, layers, d) <= 0:
        raise TTScaleError("FLOPs of an upstream model are counted from its shape: pass "
                           "--upstream-params N --upstream-layers L --upstream-d-model D, or "
                           "--upstream-shape MODEL_DIR")
    return OpenAIGenerator(o.upstream, name, params, layers, d, api_key=o.upstream_api_key,
                           chat=o.upstream_chat,
                           max_concurrency=max(16, o.limits.max_concurrency * 4),
                           timeout=o.upstream_timeout or o.limits.request_timeout_s,
                           **({} if o.upstream_max_retries is None
                              else {"max_retries": o.upstream_max_retries}))


def build_config(o: ServeOptions) -> ServeConfig:
    """The ServeConfig the options describe (loads the model or checks nothing remote yet)."""
    keys = load_keys(o.api_keys, files=o.api_key_files)
    planner = None
    if o.plan:
        from ttscale.serve.auto import plan_runner

        planner = plan_runner(o.plan)
    if o.upstream_timeout is not None and not o.upstream_timeout > 0:
        raise TTScaleError(f"--upstream-timeout={o.upstream_timeout} is out of range; accepted: "
                           "seconds > 0")
    if o.upstream_max_retries is not None and o.upstream_max_retries < 0:
        raise TTScaleError(f"--upstream-max-retries={o.upstream_max_retries} is out of range; "
                           "accepted: an integer >= 0 (0: no retries)")
    if not o.upstream:
        given = [f for f, v in (("--upstream-timeout", o.upstream_timeout),
                                ("--upstream-max-retries", o.upstream_max_retries)) if v is not None]
        if given:
            raise TTScaleError(f"{', '.join(given)} need --upstream URL (the embedded engine "
                               "makes no upstream calls)")
    if o.upstream:
        if o.model:
            raise TTScaleError("pass either --model (embedded engine) or --upstream URL, not both")
        given = [f for f, v in (("--kv-memory", o.kv_memory), ("--speculative", o.speculative),
                                ("--sparse-attention", o.sparse_attention)) if v is not None]
        if given:
            raise TTScaleError(f"{given[0]} applies only to the embedded engine (--model), not "
                               "to --upstream URL: the upstream runs its own engine")
        gen = _upstream_generator(o)
        return ServeConfig(gen, gen.model_name, o.limits, keys, upstream=True, planner=planner)
    from ttscale.engine import load_generator
    from ttscale.models.registry import resolve_model

    path = resolve_model(o.model) if o.model else default_model()
    gen = load_generator(path, backend="torch", device=o.device, dtype=o.dtype,
                         kv_memory=o.kv_memory, sparse_attention=o.sparse_attention,
                         speculative=o.speculative)
    return ServeConfig(gen, gen.model_name, o.limits, keys, chat_template=_chat_template(path),
                       planner=planner)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(o: ServeOptions) -> None:
    """Build the server and run it until SIGINT/SIGTERM (requests in flight then finish)."""
    from ttscale.serve.runner import serve_forever

    cfg = build_config(o)
    if not _is_loopback(o.host) and not cfg.api_keys:
        log.warning("serving on %s without API keys: anyone who can reach it can use it", o.host)
    print(f"ttscale serve: {cfg.model_name} on http://{o.host}:{o.port}/v1 "
          f"({'upstream ' + ', '.join(o.upstream) if o.upstream else 'embedded engine'}; "
          f"{'API keys required' if cfg.api_keys else 'no API key'})", flush=True)
    serve_forever(create_app(cfg), o.host, o.port, graceful_s=o.limits.request_timeout_s,
                  access_log=o.access_log)
