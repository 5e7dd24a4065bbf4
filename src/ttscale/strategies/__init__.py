"""Test-time strategies by name: `solve` one problem, `solve_many` a list, `get_params` to build
and check a strategy's parameters.

Every strategy is `fn(problem, task, generator, scorer, params) -> Solution`, registered in
`STRATEGIES` with its parameter dataclass (see `strategies/base.py`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ttscale.engine.base import Generator
from ttscale.engine.task_stops import with_task_stops
from ttscale.errors import TTScaleError, unknown
from ttscale.rewards.base import Scorer
from ttscale.strategies import parallel, sequential, stopping  # noqa: F401  (registration)
from ttscale.strategies import beam, hybrid, mcts, rebase  # noqa: F401  (registration)
from ttscale.strategies import cascade  # noqa: F401  (registration)
from ttscale.strategies.base import STRATEGIES, Candidate, Meter, Solution, register
from ttscale.tasks.base import Task
from ttscale.tasks.effort import LONG_MAX_DEPTH, apply_effort, check_effort, max_tokens_for
from ttscale.types import Problem

ParamsLike = Mapping[str, Any] | Any | None


def strategy_names() -> list[str]:
    return sorted(STRATEGIES)


def _lookup(strategy: str) -> tuple[Any, type]:
    if strategy not in STRATEGIES:
        raise unknown("strategy", strategy, strategy_names())
    return STRATEGIES[strategy]


def _coerce(strategy: str, field: dataclasses.Field, value: Any) -> Any:
    """A value given as text (from the command line) converted to the field's type."""
    if not isinstance(value, str):
        return value
    names = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    text = value.strip()
    if text.lower() == "none" and "None" in names:
        return None
    kinds = [t for t in ("bool", "int", "float") if t in names.replace("None", "")]
    try:
        if "bool" in kinds:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if "int" in kinds:
            return int(text)
        if "float" in kinds:
            return float(text)
    except ValueError:
        raise TTScaleError(f"{strategy} parameter {field.name}={value!r} is not a "
                           f"{' or '.join(kinds)}") from None
    return value


def get_params(strategy: str, params: ParamsLike = None, **kw: Any) -> Any:
    """The parameter dataclass of `strategy`, built from a dict / dataclass / keywords, checked.

    Unknown strategy or parameter names and values that make no sense raise TTScaleError;
    values given as text (from the command line) are converted to the field's type.
    """
    _, cls = _lookup(strategy)
    if isinstance(params, cls) and not kw:
        return params
    given: dict[str, Any] = {}
    if params is not None:
        if dataclasses.is_dataclass(params):
            given.update(dataclasses.asdict(params))
        elif isinstance(params, Mapping):
            given.update(params)
        else:
            raise TTScaleError(f"params for {strategy} must be a dict or {cls.__name__}, "
                               f"not {type(params).__name__}")
    given.update(kw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in given:
        if name not in fields:
            raise unknown(f"parameter for {strategy}", name, sorted(fields))
    try:
        return cls(**{k: _coerce(strategy, fields[k], v) for k, v in given.items()})
    except TypeError as e:  # a value of the wrong type compared with a number
        raise TTScaleError(f"bad parameter for {strategy}: {e}") from None


def params_at_effort(strategy: str, params: ParamsLike, effort: str) -> Any:
    """`strategy`'s checked parameters, with room for long chains at effort "high" or "auto".

    A `max_tokens` or `max_depth` the caller gave is kept; the defaults are raised to
    LONG_MAX_TOKENS tokens and (tree searches) LONG_MAX_DEPTH steps.
    """
    checked = get_params(strategy, params)
    given = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})
    if check_effort(effort) == "low":
        return checked
    if "max_tokens" not in given and hasattr(checked, "max_tokens"):
        checked = dataclasses.replace(checked, max_tokens=max_tokens_for(effort, checked.max_tokens))
    if "max_depth" not in given and hasattr(checked, "max_depth"):
        checked = dataclasses.replace(checked, max_depth=max(checked.max_depth, LONG_MAX_DEPTH))
    return checked


def solve(problem: Problem, task: Task, generator: Generator, strategy: str = "greedy",
          params: ParamsLike = None, scorer: Scorer | None = None,
          effort: str = "low") -> Solution:
    """Run one strategy on one problem: the chosen answer, every candidate, the exact cost.

    `effort` "high" asks the problem in the long, step-checkable mode (tasks/effort.py).
    """
    fn, _ = _lookup(strategy)
    generator = with_task_stops(generator, task)  # e.g. few-shot prompts stop at "Question:"
    return fn(apply_effort(problem, effort), task, generator, scorer,
              params_at_effort(strategy, params, effort))


def solve_many(problems: Sequence[Problem], task: Task, generator: Generator,
               strategy: str = "greedy", params: ParamsLike = None,
               scorer: Scorer | None = None, effort: str = "low") -> list[Solution]:
    """`solve` for each problem (parameters are checked once, before any work); over remote
    servers several problems are in flight at once (`concurrent_problems` of the generator),
    so that repeated endpoints share the work. Results are in order and the same either way."""
    fn, _ = _lookup(strategy)
    p = params_at_effort(strategy, params, effort)
    problems = [apply_effort(problem, effort) for problem in problems]
    generator = with_task_stops(generator, task)
    workers = min(_concurrent_problems(generator, scorer), len(problems))
    if workers <= 1:
        return [fn(problem, task, generator, scorer, p) for problem in problems]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="ttscale-solve") as pool:
        return list(pool.map(lambda problem: fn(problem, task, generator, scorer, p), problems))


def _concurrent_problems(generator: Generator, scorer: Scorer | None) -> int:
    """How many problems may run at once: the generator's `concurrent_problems` (a remote,
    thread-safe backend; 1 for local engines), and 1 with a scorer that runs a local model."""
    workers = int(getattr(generator, "concurrent_problems", 1) or 1)
    if scorer is not None and (hasattr(scorer, "model") or
                               int(getattr(getattr(scorer, "generator", None),
                                           "concurrent_problems", 1) or 1) <= 1
                               and hasattr(scorer, "generator")):
        return 1
    return workers


def summarize(task: Task, problems: Sequence[Problem], solutions: Sequence[Solution]
              ) -> dict[str, Any]:
    """Accuracy and mean cost over problems, and one record per problem (`ttscale solve`)."""
    rows = []
    for p, s in zip(problems, solutions):
        rows.append({
            "id": p.id, "question": p.question, "gold": p.answer, "answer": s.answer,
            "correct": bool(task.check(p, s.answer)), "flops": s.cost.flops,
            "tokens": s.cost.tokens, "policy_flops": s.cost.policy_flops,
            "verifier_flops": s.cost.verifier_flops, "policy_tokens": s.cost.policy_tokens,
            "verifier_tokens": s.cost.verifier_tokens, "wall_s": s.cost.wall_s,
            "completion_tokens": s.cost.policy_completion_tokens,
            "verifier_cpu_s": s.cost.verifier_cpu_s,  # a model-free verifier (the checker)
            "num_candidates": len(s.candidates),
        })
    k = max(len(rows), 1)
    return {
        "accuracy": sum(r["correct"] for r in rows) / k,
        "num_problems": len(rows),
        "mean_flops": sum(r["flops"] for r in rows) / k,
        "mean_tokens": sum(r["tokens"] for r in rows) / k,
        "mean_verifier_cpu_s": sum(r["verifier_cpu_s"] for r in rows) / k,
        "problems": rows,
    }


__all__ = ["STRATEGIES", "Candidate", "Meter", "Solution", "get_params", "register", "solve",
           "solve_many", "strategy_names", "summarize"]
