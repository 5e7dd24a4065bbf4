"""Which strategy answers a request: the `ttscale` object, a model-name prefix, or the plan.

`model: "majority-8/ttscale-base"` means majority voting over 8 samples; `model:
"beam_search/ttscale-base"` beam search with its defaults; `{"ttscale": {"strategy": "auto",
"budget_flops": 1e12}}` the planner's choice for that budget. No strategy: plain sampling.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any

from ttscale.serve.errors import APIError, bad_request
from ttscale.serve.limits import Limits
from ttscale.serve.schemas import TTScaleOptions

AUTO = "auto"
log = logging.getLogger(__name__)
_PREFIX = re.compile(r"^(?P<name>[A-Za-z_][\w.]*?)(?:-(?P<n>\d{1,6}))?/(?P<model>.+)$")


@functools.cache
def _import_all() -> None:
    import ttscale.strategies as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        try:
            importlib.import_module(f"ttscale.strategies.{mod.name}")
        except Exception as e:  # one broken module must not take the others down
            log.warning("strategy module %s not loaded: %s", mod.name, e)


def strategies() -> dict[str, tuple[Any, type]]:
    """The strategy registry, with every module of `ttscale.strategies` imported."""
    from ttscale.strategies.base import STRATEGIES

    _import_all()
    return STRATEGIES


@dataclass
class Choice:
    """How to answer one request."""

    model: str  # the served model the request names
    strategy: str | None = None  # None: plain sampling
    n: int | None = None
    scorer: str | None = None
    budget_flops: float | None = None
    return_candidates: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    effort: str | None = None  # "low" / "high": applied to the problem before any work


def resolve(model: str, options: TTScaleOptions | None, served: str) -> Choice:
    """The Choice for a request's `model` field and `ttscale` object (404 for another model)."""
    opts = options or TTScaleOptions()
    choice = Choice(served, opts.strategy, opts.n, opts.scorer, opts.budget_flops,
                    opts.return_candidates, dict(opts.params), opts.effort)
    if model != served:
        m = _PREFIX.match(model)
        if not m or m.group("model") != served or not _known(m.group("name")):
            raise APIError(404, f"the model {model!r} does not exist; this server serves "
                           f"{served!r}, optionally prefixed by a strategy "
                           f"('majority-8/{served}'); see /v1/models", code="model_not_found",
                           param="model")
        if choice.strategy is None:
            choice.strategy = m.group("name")
        if choice.n is None and m.group("n"):
            choice.n = int(m.group("n"))
    if choice.strategy is not None and not _known(choice.strategy):
        names = ", ".join([*sorted(strategies()), AUTO])
        raise bad_request(f"unknown strategy {choice.strategy!r}; accepted: {names}",
                          param="ttscale.strategy", code="unknown_strategy")
    if choice.params and choice.strategy in (None, AUTO):
        raise bad_request("ttscale.params sets a strategy's parameters: name the strategy "
                          "(ttscale.strategy or a prefix such as 'majority-8/MODEL'); 'auto' "
                          "takes none", param="ttscale.params", code="params_without_strategy")
    return choice


def _known(name: str) -> bool:
    return name == AUTO or name in strategies()


def build_params(strategy: str, choice: Choice, sampling: dict[str, Any],
                 limits: Limits | None = None) -> Any:
    """The strategy's params object: its defaults, then the request's sampling fields, then
    `ttscale.n`, `ttscale.budget_flops` and `ttscale.params`, each checked by the strategy's
    typed model (see `serve.params`): a bad type, range or name is a 400 naming the field, and
    no value may exceed the server's `limits`; defaults over a limit shrink to it."""
    from ttscale.serve import params as typed

    _, cls = strategies()[strategy]
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in sampling.items() if v is not None and k in names}
    if sampling.get("max_tokens") and "max_tokens" not in names and "step_max_tokens" in names:
        values["step_max_tokens"] = sampling["max_tokens"]  # tree search: no step longer
    if choice.n is not None:
        if "n" not in names:
            raise bad_request(f"strategy {strategy!r} takes no n", param="ttscale.n")
        values["n"] = choice.n
    if choice.budget_flops is not None and "budget_flops" in names:
        values["budget_flops"] = choice.budget_flops
    values.update(typed.check_params(strategy, cls, choice.params, limits))
    if limits is not None:
        for f in dataclasses.fields(cls):
            cap = (limits.max_tokens if f.name in typed.TOKEN_FIELDS else
                   limits.max_samples if f.name in ("n", "iterations") else None)
            if f.name not in values and cap is not None and isinstance(f.default, int) \
                    and f.default > cap:
                values[f.name] = cap
    return typed.build(strategy, cls, values)


def strategy_samples(params: Any) -> int:
    """How many samples a params object asks for (its `n`, `iterations` or 1), for limits."""
    for name in ("n", "iterations"):
        v = getattr(params, name, None)
        if isinstance(v, int):
            return v
    return 1
