"""Typed `ttscale.params`: one pydantic model per strategy, generated from its params dataclass.

Each model has the dataclass's fields with their types (strict: no "5" for 5, no true for 1,
finite floats only) and forbids unknown names, so a bad value is a 400 naming the field before
any work starts. Integer fields are bounded by the server's limits (token counts by max_tokens,
sample counts by max_samples), so `ttscale.params` can tighten a limit but never widen it; the
dataclass's own `validate()` then checks the ranges it knows (temperature >= 0, ...).
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ttscale.errors import TTScaleError
from ttscale.serve.errors import APIError, bad_request
from ttscale.serve.limits import Limits

SEED_MAX = 2**63 - 1
MAX_TOP_LOGPROBS = 20
OTHER_INT_MAX = 1024  # any other integer (depth, rounds, windows, ...): a sanity bound
TEXT_MAX = 64
TOKEN_FIELDS = frozenset({"max_tokens", "step_max_tokens", "answer_tokens", "chunk"})
SAMPLE_FIELDS = frozenset({"n", "iterations", "width", "batch", "warmup"})
_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _int_bounds(name: str, limits: Limits | None) -> tuple[int, int | None, str | None]:
    """(lowest, highest, the limit's name) of an integer field."""
    if name == "seed":
        return 0, SEED_MAX, None
    if name == "top_logprobs":
        return 0, MAX_TOP_LOGPROBS, None
    if name in TOKEN_FIELDS:
        return 0, limits.max_tokens if limits else None, "max_tokens"
    if name in SAMPLE_FIELDS:
        return 0, limits.max_samples if limits else None, "max_samples"
    return 0, OTHER_INT_MAX, None


def _field(name: str, hint: Any, default: Any, limits: Limits | None) -> tuple[Any, Any]:
    args = set(typing.get_args(hint)) or {hint}
    if int in args:
        lo, hi, _ = _int_bounds(name, limits)
        return hint, Field(default, ge=lo, le=hi)
    if str in args:
        return hint, Field(default, max_length=TEXT_MAX)
    return hint, Field(default)


def params_model(strategy: str, params_cls: type, limits: Limits | None = None) -> type[BaseModel]:
    """The pydantic model of `params_cls`'s fields (bounded by `limits` when given)."""
    key = None if limits is None else tuple(sorted(dataclasses.asdict(limits).items()))
    return _model(strategy, params_cls, key)


@functools.cache
def _model(strategy: str, params_cls: type, limits_key: tuple | None) -> type[BaseModel]:
    limits = Limits(**dict(limits_key)) if limits_key is not None else None
    hints = typing.get_type_hints(params_cls)
    fields = {}
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        fields[f.name] = _field(f.name, hints[f.name], default, limits)
    title = "".join(p.title() for p in strategy.split("_")) + "Params"
    model = create_model(title, __config__=_CONFIG, **fields)
    model.__doc__ = f"`ttscale.params` of strategy {strategy!r}: " + \
        (params_cls.__doc__ or "").strip().splitlines()[0] if params_cls.__doc__ else None
    return model


def check_params(strategy: str, params_cls: type, given: dict[str, Any],
                 limits: Limits | None) -> dict[str, Any]:
    """`given` (the request's `ttscale.params`) checked against the typed model: a 400 naming
    the first bad field (unknown name, wrong type, over a limit). Returns the given fields."""
    model = params_model(strategy, params_cls, limits)
    try:
        model.model_validate(given)
    except ValidationError as e:
        raise _params_error(strategy, params_cls, e.errors()[0], limits) from None
    return dict(given)


def _params_error(strategy: str, params_cls: type, err: dict[str, Any],
                  limits: Limits | None) -> APIError:
    loc = [str(x) for x in err.get("loc", ())]
    name = loc[0] if loc else ""
    param = f"ttscale.params.{name}" if name else "ttscale.params"
    value = err.get("input")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if err.get("type") == "extra_forbidden":
        accepted = ", ".join(f.name for f in dataclasses.fields(params_cls))
        return bad_request(f"strategy {strategy!r} has no parameter {name!r}; accepted: "
                           f"{accepted}", param=param, code="unknown_parameter")
    lo, hi, limit = _int_bounds(name, limits)
    if limit is not None and hi is not None and err.get("type") == "less_than_equal":
        return APIError(400, f"{param}={value} exceeds this server's limit {limit}={hi}",
                        code=f"limit_{limit}", param=param)
    return bad_request(f"{param}={shown}: {err.get('msg', 'invalid value')}", param=param,
                       code="invalid_value")


def build(strategy: str, params_cls: type, values: dict[str, Any]) -> Any:
    """The params dataclass from checked values; its own range checks become a 400 naming the
    field (`temperature=-1 is out of range; accepted: >= 0`)."""
    try:
        return params_cls(**values)
    except TTScaleError as e:
        name = str(e).split("=", 1)[0].strip()
        names = {f.name for f in dataclasses.fields(params_cls)}
        param = f"ttscale.params.{name}" if name in names else "ttscale.params"
        raise bad_request(f"strategy {strategy!r}: {e}", param=param,
                          code="invalid_value") from None
    except (TypeError, ValueError) as e:
        raise bad_request(f"bad parameters for strategy {strategy!r}: {e}",
                          param="ttscale.params", code="invalid_value") from None


def params_schemas() -> dict[str, dict[str, Any]]:
    """JSON schema of each strategy's `ttscale.params` (for the OpenAPI document)."""
    from ttscale.serve.dispatch import strategies

    return {name: params_model(name, cls).model_json_schema()
            for name, (_, cls) in sorted(strategies().items())}
