"""A verification-gated cascade: answer greedily, let the verifier check, spend more only if flagged.

1. One greedy chain (at whatever effort the problem is asked; `apply_effort` before solving).
2. The scorer scores it. A score >= `threshold` accepts it: the greedy answer is returned and
   nothing more is spent.
3. A flagged answer escalates (`escalate`): `majority`, `best_of_n` or `weighted_majority` over
   the greedy chain plus `n` samples, or `high`, one chain of the long, step-checkable mode.

The threshold comes from `params.threshold`, else from a file written by `calibrate_cascade`
(chosen on train or held-out problems, never on the scored ones), else `DEFAULT_THRESHOLD`.
With `max_flops`, the run never spends more FLOPs than that (policy plus verifier): before each
call it bounds the call's worst case (every sample reaching `max_tokens`, a learned verifier
reading its longest input) and draws fewer samples, or none, when the bound does not fit.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Candidate, Meter, Solution, register, require, require_scorer
from ttscale.strategies.parallel import best_index
from ttscale.strategies.sampling import (SampleParams, candidate, draw, finish, logprob_needs,
                                         sampling, score_candidates)
from ttscale.strategies.voting import vote
from ttscale.tasks.base import Task
from ttscale.tasks.effort import LONG_MAX_TOKENS, apply_effort
from ttscale.types import Problem

ESCALATIONS = ("majority", "best_of_n", "weighted_majority", "high")
DEFAULT_THRESHOLD = 0.5  # for scores that are probabilities of being right (prm, orm, oracle, checker)
ZERO_FLOP_SCORERS = ("oracle", "checker", "likelihood", "self-certainty")


@dataclass
class CascadeParams(SampleParams):
    """Greedy first; `n` samples (or the long mode) only when the verifier flags the answer."""

    n: int = 8  # escalation samples
    escalate: str = "majority"  # majority, best_of_n, weighted_majority or high
    threshold: float | None = None  # flag a greedy answer scored below this
    calibration: str | None = None  # a JSON file from calibrate_cascade (used when no threshold)
    max_flops: float | None = None  # never spend more than this per problem (policy + verifier)
    high_max_tokens: int = LONG_MAX_TOKENS  # token limit of the long-mode chain (escalate="high")

    def validate(self) -> None:
        super().validate()
        require(self.n >= 1, "n", self.n, ">= 1")
        if self.escalate not in ESCALATIONS:
            raise unknown("escalation", self.escalate, ESCALATIONS)
        require(self.max_flops is None or self.max_flops > 0, "max_flops", self.max_flops, "> 0")
        require(self.high_max_tokens >= 1, "high_max_tokens", self.high_max_tokens, ">= 1")
        if self.calibration is not None and not Path(self.calibration).is_file():
            raise TTScaleError(f"cascade calibration {self.calibration!r} does not exist; accepted: "
                               "a file written by calibrate_cascade")


def resolve_threshold(params: CascadeParams, scorer: Scorer) -> float:
    """The threshold in force: the parameter, else the calibration file's, else the default."""
    if params.threshold is not None:
        return params.threshold
    if params.calibration is not None:
        cal = json.loads(Path(params.calibration).read_text())
        if cal.get("scorer") != scorer.name:
            raise TTScaleError(f"cascade calibration {params.calibration!r} is for scorer "
                               f"{cal.get('scorer')!r}, not {scorer.name!r}; accepted: calibrate again "
                               "with this scorer")
        return float(cal["threshold"])
    if scorer.name == "self-certainty":
        raise TTScaleError("self-certainty scores are not probabilities: the cascade needs a "
                           "threshold or a calibration file with it")
    return DEFAULT_THRESHOLD


# -- worst-case cost ---------------------------------------------------------------------------
def verifier_bound(scorer: Scorer) -> float:
    """Most FLOPs the scorer can spend on one solution."""
    if scorer.name in ZERO_FLOP_SCORERS:
        return 0.0
    shape, max_len = getattr(scorer, "shape", None), getattr(scorer, "max_len", None)
    if shape is None or max_len is None:
        raise TTScaleError(f"the cascade cannot bound the cost of scorer {scorer.name!r} under "
                           "max_flops; accepted: oracle, checker, likelihood, self-certainty, prm, orm")
    return shape.span_flops(0, max_len)  # a learned verifier reads at most max_len tokens


def policy_bound(generator: Generator, prompt: str, n: int, max_tokens: int) -> float:
    """Most FLOPs one request of `n` samples can cost: one prefill, `n` full-length continuations."""
    p = len(generator.tokenize(prompt))
    return generator.shape.span_flops(0, p) + n * generator.shape.span_flops(p, max_tokens)


def affordable(left: float, generator: Generator, prompt: str, n: int, max_tokens: int,
               per_solution: float) -> int:
    """The most samples (<= n) whose worst-case cost, scoring included, fits in `left` FLOPs."""
    k = n
    while k > 0 and policy_bound(generator, prompt, k, max_tokens) + k * per_solution > left:
        k -= 1
    return k


# -- the strategy ------------------------------------------------------------------------------
def _escalate(meter: Meter, problem: Problem, task: Task, generator: Generator, scorer: Scorer,
              params: CascadeParams, greedy: Candidate, left: float) -> tuple[list[Candidate], int | None, int]:
    """Candidates after escalation, the chosen index, and the samples actually drawn."""
    if params.escalate == "high":
        long = apply_effort(problem, "high")
        if policy_bound(generator, long.prompt, 1, params.high_max_tokens) > left:
            return [greedy], 0, 0
        comps = draw(meter, generator, [long.prompt],
                     [sampling(params, n=1, call=1, temperature=0.0, max_tokens=params.high_max_tokens)])[0]
        cand = candidate(task, comps[0].text, finish_reason=comps[0].finish_reason, effort="high")
        return [greedy, cand], (1 if cand.answer is not None else 0), 1
    scored = params.escalate != "majority"
    per_solution = verifier_bound(scorer) if scored and math.isfinite(left) else 0.0
    k = params.n if not math.isfinite(left) else affordable(
        left, generator, problem.prompt, params.n, params.max_tokens, per_solution)
    if k == 0:
        return [greedy], 0, 0
    lp, top = logprob_needs(scorer) if scored else (False, 0)
    comps = draw(meter, generator, [problem.prompt],
                 [sampling(params, n=k, call=1, logprobs=lp, top_logprobs=top)])[0]
    samples = [candidate(task, c.text, finish_reason=c.finish_reason) for c in comps]
    if scored:
        score_candidates(meter, scorer, problem, samples, comps)
    cands = [greedy, *samples]
    if params.escalate == "majority":
        return cands, vote(task, cands), k
    if params.escalate == "best_of_n":
        return cands, best_index(cands), k
    return cands, vote(task, cands, [c.score or 0.0 for c in cands]), k


@register("cascade", CascadeParams)
def cascade(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
            params: CascadeParams) -> Solution:
    """Greedy; return it when the verifier accepts it, else escalate within `max_flops`."""
    scorer = require_scorer(scorer, "cascade")
    threshold = resolve_threshold(params, scorer)
    budget = math.inf if params.max_flops is None else params.max_flops
    first = policy_bound(generator, problem.prompt, 1, params.max_tokens) + verifier_bound(scorer) \
        if math.isfinite(budget) else 0.0
    if first > budget:
        raise out_of_range("max_flops", params.max_flops, f">= {first:.4g} (the worst case of the "
                           "greedy chain and its check)")
    meter = Meter()
    lp, top = logprob_needs(scorer)
    comps = draw(meter, generator, [problem.prompt],
                 [sampling(params, n=1, call=0, temperature=0.0, logprobs=lp, top_logprobs=top)])[0]
    greedy = candidate(task, comps[0].text, finish_reason=comps[0].finish_reason, role="greedy")
    score_candidates(meter, scorer, problem, [greedy], comps)
    accepted = (greedy.score or 0.0) >= threshold
    if accepted:
        return finish(meter, "cascade", params, [greedy], 0, threshold=threshold, escalated=False,
                      escalation_samples=0)
    cands, chosen, k = _escalate(meter, problem, task, generator, scorer, params, greedy,
                                 budget - meter.cost.flops)
    return finish(meter, "cascade", params, cands, chosen, threshold=threshold, escalated=k > 0,
                  escalation_samples=k)


# -- calibration -------------------------------------------------------------------------------
def best_threshold(scores: Sequence[float], greedy_right: Sequence[bool],
                   escalated_right: Sequence[bool]) -> tuple[float, float]:
    """The threshold that maximises the cascade's accuracy on calibration problems, and that
    accuracy; among equals the lowest (fewest escalations). A problem is escalated iff its greedy
    score is below the threshold."""
    if not scores:
        raise TTScaleError("calibration needs at least one problem")
    options = sorted(set(scores)) + [math.nextafter(max(scores), math.inf)]
    best = (-1.0, 0.0)
    for t in options:
        acc = sum(g if s >= t else e for s, g, e in zip(scores, greedy_right, escalated_right)) / len(scores)
        if acc > best[0]:
            best = (acc, t)
    return best[1], best[0]


def check_calibration_split(split: str) -> str:
    """`split` when thresholds may be chosen on it (train, heldout), else a one-line error."""
    if split not in ("train", "heldout"):
        raise TTScaleError(f"calibrate the cascade on train or heldout problems, never on the scored "
                           f"test split (got {split!r}); accepted splits: train, heldout")
    return split


def calibrate_cascade(task: Task, generator: Generator, scorer: Scorer, params: Any = None,
                      level: int | None = None, num_problems: int = 50, split: str = "heldout",
                      out: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Choose the cascade's threshold on `split` problems (train or heldout, never test).

    Each problem is run once with every greedy answer escalated, which tells, for any threshold,
    what the cascade would answer; the threshold with the best accuracy wins (`best_threshold`).
    Written to `out` as JSON (the `calibration` parameter reads it back).
    """
    from ttscale.strategies import get_params

    check_calibration_split(split)
    p = get_params("cascade", params)
    always = replace(p, threshold=math.inf, calibration=None)
    problems = task.problems(split=split, level=level, n=num_problems, seed=seed)
    scores, g_ok, e_ok, flops = [], [], [], []
    for prob in problems:
        sol = cascade(prob, task, generator, scorer, always)
        g = sol.candidates[0]
        scores.append(float(g.score or 0.0))
        g_ok.append(bool(task.check(prob, g.answer)))
        e_ok.append(bool(task.check(prob, sol.answer)))
        flops.append(sol.cost.flops)
    threshold, acc = best_threshold(scores, g_ok, e_ok)
    record = {"threshold": threshold, "scorer": scorer.name, "task": task.name, "level": level,
              "split": split, "problems": len(problems), "accuracy": acc,
              "greedy_accuracy": sum(g_ok) / len(g_ok), "always_escalated_accuracy": sum(e_ok) / len(e_ok),
              "escalation_rate": sum(s < threshold for s in scores) / len(scores),
              "params": {k: v for k, v in asdict(p).items() if k not in ("threshold", "calibration")}}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2) + "\n")
    return record
