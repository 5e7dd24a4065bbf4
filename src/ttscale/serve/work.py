"""The work behind one request, run on a worker thread: plain sampling or a strategy run.

Both return an Outcome (choices, usage of every token spent, FLOPs, the `ttscale` summary);
the app turns it into an OpenAI response. Errors become APIErrors: a bad request 400, a failed
upstream 502, an engine error on the request's own input 400.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError
from ttscale.serve.batching import Cancelled
from ttscale.serve.dispatch import AUTO, Choice, build_params, strategies, strategy_samples
from ttscale.serve.errors import APIError, bad_request
from ttscale.serve.limits import Limits
from ttscale.serve.problems import problem_from_prompt
from ttscale.serve.stepping import Piece
from ttscale.tasks.effort import apply_effort
from ttscale.types import (Completion, GenerationRequest, GenerationResult, Problem,
                           SamplingParams, Usage)


@dataclass
class Answer:
    """One answer: its text, why it ended, and (plain sampling) its completion."""

    text: str
    finish_reason: str
    completion: Completion | None = None


@dataclass
class Outcome:
    choices: list[Answer]
    prompt_tokens: int = 0  # every prompt token the policy and the verifier read, cached too
    cached_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    strategy: str = "sample"
    wall_s: float = 0.0
    num_candidates: int = 0
    candidates: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The response's `ttscale` object."""
        out: dict[str, Any] = {"strategy": self.strategy, "flops": self.flops,
                               "wall_s": round(self.wall_s, 6),
                               "num_candidates": self.num_candidates, **self.extra}
        if self.candidates is not None:
            out["candidates"] = self.candidates
        return out


def generation_error(message: str, upstream: bool) -> APIError:
    """An engine's per-request error: the upstream's failure (502) or a bad input (400)."""
    if upstream and "upstream rejected the request" not in message:
        return APIError(502, f"upstream failure: {message}", code="upstream_error")
    return bad_request(message, code="generation_error")


def run_plain(generator: Generator, prompts: Sequence[str | list[int]],
              params: SamplingParams, upstream: bool,
              chat_call: Callable[[SamplingParams], Any] | None = None) -> Outcome:
    """`params.n` completions of each prompt, in one batch (or one upstream chat call)."""
    t0 = time.perf_counter()
    if chat_call is not None:
        results = chat_call(params)
    else:
        results = generator.generate([GenerationRequest(p, params) for p in prompts])
    out = Outcome([])
    for r in results:
        if r.error is not None:
            raise generation_error(r.error, upstream)
        out.choices += [Answer(c.text, c.finish_reason, c) for c in r.completions]
        out.prompt_tokens += r.usage.prompt_tokens
        out.cached_tokens += r.usage.cached_tokens
        out.completion_tokens += r.usage.completion_tokens
        out.flops += r.usage.flops
    out.num_candidates = len(out.choices)
    out.wall_s = time.perf_counter() - t0
    return out


def run_streamed(generator: Any, prompt: str | list[int], params: SamplingParams,
                 emit: Callable[[Piece], None]) -> Outcome:
    """One sample of one prompt, handed to `emit` piece by piece as it is generated (text and
    tokens, with their logprobs when `params` asks for them)."""
    t0 = time.perf_counter()
    result = None
    for item in generator.stream(GenerationRequest(prompt, params)):
        if isinstance(item, GenerationResult):
            result = item
        else:
            emit(item)
    assert result is not None
    if result.error is not None:
        raise generation_error(result.error, False)
    out = Outcome([Answer(c.text, c.finish_reason, c) for c in result.completions],
                  prompt_tokens=result.usage.prompt_tokens, cached_tokens=result.usage.cached_tokens,
                  completion_tokens=result.usage.completion_tokens, flops=result.usage.flops,
                  num_candidates=len(result.completions))
    out.wall_s = time.perf_counter() - t0
    return out


class ScorerCache:
    """Scorers by (name, task); model-backed ones are loaded once and used under a lock."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Any] = {}

    def get(self, name: str, task: Any) -> Any:
        from ttscale.rewards import get_scorer

        key = (name, task.name if name == "oracle" else "")
        with self._lock:
            if key not in self._cache:
                self._cache[key] = _Locked(get_scorer(name, task=task, generator=self.generator))
            return self._cache[key]


class _Locked:
    """A scorer shared by worker threads, one call at a time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = threading.Lock()

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.inner.score(*args, **kwargs)


Planner = Callable[..., dict[str, Any]]


def effort_problem(problem: Problem, effort: str | None) -> Problem:
    """The problem asked at `effort` (None: as the prompt states it); a 400 when the task has
    no such mode."""
    if effort is None:
        return problem
    try:
        return apply_effort(problem, effort)
    except TTScaleError as e:
        raise bad_request(str(e), param="ttscale.effort", code="invalid_effort") from None


def effort_prompt(prompt: str, effort: str | None) -> str:
    """A plain request's text prompt asked at `effort` ("low" leaves it as it is)."""
    if effort in (None, "low"):
        return prompt
    problem, _ = problem_from_prompt(prompt)
    return effort_problem(problem, effort).prompt


def run_strategy(generator: Generator, prompt: str, choice: Choice, params: Any, n: int,
                 scorers: ScorerCache, upstream: bool, planner: Planner | None) -> Outcome:
    """`n` runs of the chosen strategy with `params` (None for auto) on the problem the prompt
    states, at the request's effort (seeds differ between runs)."""
    problem, task = problem_from_prompt(prompt)
    problem = effort_problem(problem, choice.effort)
    strategy = choice.strategy
    assert strategy is not None
    if choice.scorer == "oracle" and task.name not in ("countdown", "arith"):
        raise bad_request("the scorer 'oracle' only works on problems of the built-in tasks "
                          "(countdown 'Q: 3 5 2 -> 16', arith 'Q: 3+4*2'); this prompt is not one "
                          "of them: use prm, orm, likelihood, self-certainty or judge", param="ttscale.scorer",
                          code="oracle_needs_builtin_task")
    scorer = None
    if choice.scorer is not None:
        try:
            scorer = scorers.get(choice.scorer, task)
        except TTScaleError as e:
            raise bad_request(str(e), param="ttscale.scorer") from None
    if strategy == AUTO:
        return run_auto(generator, problem, task, choice, scorer, planner)
    fn, _ = strategies()[strategy]
    out = Outcome([], strategy=strategy, extra={"task": task.name})
    if choice.effort is not None:
        out.extra["effort"] = choice.effort
    t0 = time.perf_counter()
    cands: list[dict[str, Any]] = []
    for i in range(n):
        run_params = params
        if i and getattr(params, "seed", None) is not None:
            run_params = dataclasses.replace(params, seed=params.seed + i)
        try:
            sol = fn(problem, task, generator, scorer, run_params)
        except Cancelled:
            raise
        except TTScaleError as e:
            if "generation failed" in str(e):
                raise generation_error(str(e), upstream) from None
            raise bad_request(str(e)) from None
        c = sol.cost
        chosen = next((k for k in sol.candidates if k.text == sol.text), None)
        finish = chosen.meta.get("finish_reason", "stop") if chosen is not None else "stop"
        out.choices.append(Answer(sol.text, "length" if finish == "length" else "stop"))
        out.prompt_tokens += c.policy_tokens - c.policy_completion_tokens + c.policy_cached_tokens \
            + c.verifier_tokens
        out.cached_tokens += c.policy_cached_tokens
        out.completion_tokens += c.policy_completion_tokens
        out.flops += c.flops
        out.num_candidates += len(sol.candidates)
        out.extra.setdefault("answers", []).append(sol.answer)
        out.extra.setdefault("params", sol.params)
        cands += [{"text": k.text, "answer": k.answer, "score": k.score,
                   "step_scores": k.step_scores} for k in sol.candidates]
    out.wall_s = time.perf_counter() - t0
    if choice.return_candidates:
        out.candidates = cands
    return out


def strategy_params(choice: Choice, sampling: dict[str, Any], limits: Limits) -> Any:
    """The checked params object of the request's strategy (None for auto): a 400 for a bad
    field or a sample count over the server's limit."""
    if choice.strategy in (None, AUTO):
        return None
    params = build_params(choice.strategy, choice, sampling, limits)
    k = strategy_samples(params)
    if k > limits.max_samples:
        raise APIError(400, f"ttscale.n={k} exceeds this server's limit max_samples="
                       f"{limits.max_samples}", code="limit_max_samples", param="ttscale.n")
    return params


class _CountingScorer:
    """Adds up what a scorer's calls cost (tokens, FLOPs) for one request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.usage = Usage()

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        batch = self.inner.score(*args, **kwargs)
        self.usage = self.usage + batch.usage
        return batch


def run_auto(generator: Any, problem: Problem, task: Any, choice: Choice, scorer: Any,
             planner: Planner | None) -> Outcome:
    """`"strategy": "auto"`: the compute plan picks and runs a configuration for the budget.

    The planner reports the answer, not a solution text: the message is `A: <answer>`.
    Usage is metered on the generator and scorer, so every token the plan spent is counted.
    """
    if planner is None:
        raise bad_request("strategy 'auto' needs a compute plan: start the server with "
                          "--plan PLAN.json (made by `ttscale plan`)", param="ttscale.strategy",
                          code="no_plan")
    if choice.budget_flops is None:
        raise bad_request("strategy 'auto' needs ttscale.budget_flops (FLOPs to spend on this "
                          "request)", param="ttscale.budget_flops", code="no_budget")
    counted = _CountingScorer(scorer) if scorer is not None else None
    t0 = time.perf_counter()
    try:
        result = planner(problem, task, generator, counted, choice.budget_flops)
    except TTScaleError as e:
        raise bad_request(str(e)) from None
    used = getattr(generator, "usage", Usage())
    verifier = counted.usage if counted is not None else Usage()
    answer = result.get("answer")
    out = Outcome([Answer(f"A: {answer}\n" if answer is not None else "", "stop")],
                  strategy=AUTO, num_candidates=int(result.get("num_candidates", 0)),
                  extra={"task": task.name, "config": result.get("config"),
                         "difficulty": result.get("difficulty"), "answers": [answer],
                         "budget_flops": choice.budget_flops})
    total = used + verifier
    out.prompt_tokens, out.cached_tokens = total.prompt_tokens, total.cached_tokens
    out.completion_tokens = total.completion_tokens
    out.flops = total.flops
    out.wall_s = time.perf_counter() - t0
    return out
