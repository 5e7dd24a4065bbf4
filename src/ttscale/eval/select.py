"""Offline selection: sample once, select many.

A store holds, per problem, N sampled responses (and optionally their scores). Every selection
rule is evaluated at every budget N' <= N by subsampling without replacement: a uniformly random
ordering of the stored responses is drawn, and the rule at budget N' sees its first N' responses
(for order-free rules, a uniform N'-subset; for stopping rules, the order in which they would
have been sampled). Ties go to the earliest response in that order, as online. When the store is
small enough (n! <= `exact_limit`) every ordering is enumerated, so the result is the exact
expectation; otherwise `draws` random orderings (seeded) estimate it.

Rules: `majority`, `best_of_n` and `weighted_majority` (need scores), `pass_at_k` (the unbiased
estimator 1 - C(n-c, k) / C(n, k), exact), `esc` (windows of `window` answers, stop when one is
unanimous), `adaptive_consistency` (Beta stopping rule, `threshold`), `confident_consistency`
(that rule, or a sample scored >= `confidence` of the weighted vote's answer; it answers by the
weighted vote, as `strategies.stopping` does; needs scores). Each result holds, per N,
the mean accuracy over problems and a 95% interval (normal approximation over problems:
mean ± 1.96·sd/√P, clipped to [0, 1]); stopping rules add `mean_samples`, the samples they drew.

Only budgets every problem reaches are reported (N up to the smallest stored N). A response
without an extractable answer never votes and counts as wrong.

Python API (used by `ttscale select` and the sweep): `load_samples(path)` reads and checks a
store, `prepare(records)` extracts and grades answers, `select_rules(records | prepared)`
evaluates the rules.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import betainc

from ttscale.errors import TTScaleError, unknown
from ttscale.rewards.aggregate import aggregate as aggregate_steps
from ttscale.rewards.aggregate import check_aggregate
from ttscale.planner.samples import STOPPING_VOTE
from ttscale.strategies.stopping import AC_THRESHOLD, CONFIDENCE, ESC_WINDOW

RULES = ("majority", "best_of_n", "weighted_majority", "pass_at_k", "esc",
         "adaptive_consistency", "confident_consistency")
SCORED_RULES = ("best_of_n", "weighted_majority", "confident_consistency")


@dataclass
class SampleSet:
    """One problem's stored responses, graded: what every rule needs."""

    problem: str
    gold: str
    keys: list[str | None]  # vote key of each response's answer (None: no answer)
    correct: np.ndarray  # bool per response
    scores: np.ndarray | None  # one number per response, or None when the store has none

    @property
    def n(self) -> int:
        return len(self.keys)


# -- reading a store --------------------------------------------------------------------------
def _check_record(rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise TTScaleError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for k in ("problem", "answer", "responses"):
        if k not in rec:
            raise TTScaleError(f"{where}: missing field {k!r}; a record needs problem, answer, "
                               "responses (optional: scores, preds)")
    resp = rec["responses"]
    if not isinstance(resp, list) or not resp or not all(isinstance(r, str) for r in resp):
        raise TTScaleError(f"{where}: 'responses' must be a non-empty list of strings")
    n = len(resp)
    for k in ("scores", "preds", "correct"):
        v = rec.get(k)
        if v is not None and (not isinstance(v, list) or len(v) != n):
            raise TTScaleError(f"{where}: {k!r} must be a list with one entry per response "
                               f"({n})")
    for i, s in enumerate(rec.get("scores") or []):
        ok = _is_number(s) or (isinstance(s, list) and all(_is_number(x) for x in s))
        if not ok:
            raise TTScaleError(f"{where}: scores[{i}]={s!r} is not a number or a list of "
                               "step scores")
    for i, p in enumerate(rec.get("preds") or []):
        if p is not None and not isinstance(p, (str, int, float)):
            raise TTScaleError(f"{where}: preds[{i}]={p!r} is not a string, number or null")
    return rec


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_samples(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL store, checked; a malformed line raises with its line number."""
    p = Path(path)
    if not p.is_file():
        raise TTScaleError(f"samples file {str(path)!r} does not exist")
    records = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TTScaleError(f"{where}: malformed JSON ({e.msg})") from None
            records.append(_check_record(rec, where))
    if not records:
        raise TTScaleError(f"samples file {str(path)!r} holds no records")
    return records


def prepare(records: Sequence[dict[str, Any]], aggregate: str = "last") -> list[SampleSet]:
    """Extract answers (unless `preds` are given) and grade them, as the JSONL task does.

    A record may carry `correct` (one bool per response) to skip grading, as stores written
    by `ttscale solve --samples-out` do for built-in tasks, whose checks are not math-verify's.
    """
    from ttscale.tasks import grading

    check_aggregate(aggregate)
    records = [_check_record(r, f"record {i + 1}") for i, r in enumerate(records)]
    with_scores = [r.get("scores") is not None for r in records]
    if any(with_scores) and not all(with_scores):
        i = with_scores.index(False)
        raise TTScaleError(f"record {i + 1} has no scores while others do; give scores for "
                           "every record or none")
    grader = None
    out = []
    try:
        for r in records:
            gold = str(r["answer"])
            preds = r.get("preds")
            answers = ([None if p is None else str(p) for p in preds] if preds is not None
                       else [grading.extract_final_answer(t) for t in r["responses"]])
            if r.get("correct") is not None:
                correct = [bool(c) for c in r["correct"]]
            else:
                if grader is None:
                    grader = grading.MathGrader()
                correct = grader.equal_many([(gold, a) for a in answers])
            scores = None
            if r.get("scores") is not None:
                scores = np.array([float(s) if _is_number(s) else aggregate_steps(s, aggregate)
                                   for s in r["scores"]], dtype=float)
            out.append(SampleSet(str(r["problem"]), gold,
                                 [grading.answer_key(a) for a in answers],
                                 np.array(correct, dtype=bool), scores))
    finally:
        if grader is not None:
            grader.close()
    return out


# -- the rules at every budget -----------------------------------------------------------------
def _orderings(n: int, draws: int, exact_limit: int, rng: np.random.Generator) -> np.ndarray:
    """All orderings of n responses when there are few, else `draws` random ones: (S, n)."""
    if math.factorial(n) <= exact_limit:
        return np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
    return np.argsort(rng.random((draws, n)), axis=1)


def _vote_prefixes(codes: np.ndarray, weights: np.ndarray, first: np.ndarray
                   ) -> np.ndarray:
    """Winning code at every prefix length: (S, n), -1 where no response answered.

    codes: (S, n) answer codes in sample order (-1: no answer); weights: (S, n);
    first: (S, K) position of each code's first occurrence (n when absent).
    """
    S, n = codes.shape
    K = first.shape[1]
    onehot = (codes[:, :, None] == np.arange(K)[None, None, :])
    totals = np.cumsum(onehot * weights[:, :, None], axis=1)  # (S, n, K)
    present = first[:, None, :] <= np.arange(n)[None, :, None]  # (S, n, K)
    masked = np.where(present, totals, -np.inf)
    best = masked.max(axis=2, keepdims=True)
    tied = present & (masked == best)
    # among tied codes, the earliest first occurrence wins
    pos = np.where(tied, first[:, None, :], n + 1)
    winner = pos.argmin(axis=2)
    return np.where(present.any(axis=2), winner, -1)


def _top_two_prefixes(codes: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts of the two leading answers at every prefix: two (S, n) arrays."""
    onehot = (codes[:, :, None] == np.arange(max(K, 2))[None, None, :])
    counts = np.cumsum(onehot, axis=1)
    top = -np.partition(-counts, 1, axis=2)[:, :, :2]
    return top[:, :, 0], top[:, :, 1]


def _evaluate(ss: SampleSet, orders: np.ndarray, max_n: int, rules: Sequence[str],
              window: int, threshold: float, confidence: float = CONFIDENCE) -> dict[str, np.ndarray]:
    """Per rule: expected accuracy at N = 1..max_n (and samples drawn, for stopping rules)."""
    S, n = orders.shape
    uniq = list(dict.fromkeys(k for k in ss.keys if k is not None))
    code_of = {k: i for i, k in enumerate(uniq)}
    K = len(uniq)
    resp_code = np.array([-1 if k is None else code_of[k] for k in ss.keys], dtype=np.int64)
    codes = resp_code[orders]  # (S, n)
    rows = np.arange(S)
    first = np.full((S, max(K, 1)), n, dtype=np.int64)
    for k in range(K):
        hit = codes == k
        first[:, k] = np.where(hit.any(axis=1), hit.argmax(axis=1), n)

    def correct_of(winner: np.ndarray) -> np.ndarray:
        """(S, n) correctness of the first response (in sample order) of each winner code."""
        pos = first[rows[:, None], np.maximum(winner, 0)]
        chosen = orders[rows[:, None], np.minimum(pos, n - 1)]
        return np.where(winner >= 0, ss.correct[chosen], False)

    out: dict[str, np.ndarray] = {}
    Ns = np.arange(1, max_n + 1)
    maj = correct_of(_vote_prefixes(codes, np.ones((S, n)), first)) if K else np.zeros((S, n), bool)
    if "majority" in rules:
        out["majority"] = maj[:, :max_n].mean(axis=0)
    confident = "confident_consistency" in rules and ss.scores is not None
    if ("weighted_majority" in rules or confident) and ss.scores is not None:
        wts = ss.scores[orders]  # (S, n) scores in sample order
        lead = _vote_prefixes(codes, wts, first) if K else np.full((S, n), -1)
        wm = correct_of(lead) if K else np.zeros((S, n), bool)
        if "weighted_majority" in rules:
            out["weighted_majority"] = wm[:, :max_n].mean(axis=0)
    if "best_of_n" in rules and ss.scores is not None:
        sc = ss.scores[orders]
        best_pos = np.zeros(S, dtype=np.int64)
        acc = np.zeros(max_n)
        for t in range(max_n):
            better = sc[:, t] > sc[rows, best_pos]  # strictly: earliest wins ties
            best_pos = np.where(better, t, best_pos)
            acc[t] = ss.correct[orders[rows, best_pos]].mean()
        out["best_of_n"] = acc
    if "pass_at_k" in rules:
        c = int(ss.correct.sum())
        out["pass_at_k"] = np.array([1.0 - math.comb(n - c, k) / math.comb(n, k) for k in Ns])
    if "esc" in rules or "adaptive_consistency" in rules or confident:
        stops: dict[str, np.ndarray] = {}
        if "esc" in rules:
            # end of the first full window whose answers are unanimous (n when none is)
            stop = np.full(S, n, dtype=np.int64)
            for start in range(0, n - window + 1, window):
                w = codes[:, start: start + window]
                unanimous = (w[:, :1] >= 0).ravel() & (w == w[:, :1]).all(axis=1)
                stop = np.where(unanimous & (stop == n), start + window, stop)
            stops["esc"] = stop
        if "adaptive_consistency" in rules or confident:  # the Beta rule, both use it
            v1, v2 = _top_two_prefixes(codes, K)
            beta = (v1 > 0) & (1.0 - betainc(v1 + 1.0, v2 + 1.0, 0.5) >= threshold)  # (S, n)
        if "adaptive_consistency" in rules:
            stops["adaptive_consistency"] = np.where(beta.any(axis=1), beta.argmax(axis=1) + 1, n)
        if confident:
            # has the weighted vote's answer a sample scored >= confidence among those drawn?
            onehot = codes[:, :, None] == np.arange(max(K, 1))[None, None, :]
            seen = np.cumsum(onehot & (wts >= confidence)[:, :, None], axis=1) > 0  # (S, n, K)
            at_lead = np.take_along_axis(seen, np.maximum(lead, 0)[:, :, None], 2)[:, :, 0]
            fire = beta | ((lead >= 0) & at_lead)
            stops["confident_consistency"] = np.where(fire.any(axis=1), fire.argmax(axis=1) + 1, n)
        for name, stop in stops.items():
            drawn = np.minimum(stop[:, None], Ns[None, :])  # (S, max_n)
            by = wm if STOPPING_VOTE[name] == "weighted_majority" else maj  # its own vote
            out[name] = by[rows[:, None], drawn - 1].mean(axis=0)
            out[name + ":samples"] = drawn.mean(axis=0)
    return out


def _summary(values: np.ndarray) -> dict[str, Any]:
    """Mean over problems and its 95% interval (normal approximation, clipped to [0, 1])."""
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": mean, "ci": [max(0.0, mean - half), min(1.0, mean + half)]}


def select_rules(records: Sequence[dict[str, Any]] | Sequence[SampleSet],
                 rules: Sequence[str] | None = None, aggregate: str = "last",
                 window: int = ESC_WINDOW, threshold: float = AC_THRESHOLD, draws: int = 500,
                 exact_limit: int = 5040, seed: int = 0, max_n: int | None = None,
                 confidence: float = CONFIDENCE) -> dict[str, dict[str, dict]]:
    """Every selection rule at every budget N: {rule: {str(N): {"mean", "ci", ...}}}.

    `records` are store records (see `load_samples`) or prepared SampleSets. Rules that need
    scores are left out when the store has none. `window` is ESC's, `threshold`
    Adaptive-Consistency's (and confident consistency's), `confidence` confident
    consistency's; `aggregate` turns step scores into one score per response.
    """
    chosen = list(RULES if rules is None else rules)
    for r in chosen:
        if r not in RULES:
            raise unknown("selection rule", r, RULES)
    if window < 1:
        raise TTScaleError(f"window={window!r} is out of range; accepted: >= 1")
    if not 0.5 < threshold < 1:
        raise TTScaleError(f"threshold={threshold!r} is out of range; accepted: 0.5 < t < 1")
    if draws < 1:
        raise TTScaleError(f"draws={draws!r} is out of range; accepted: >= 1")
    sets = [r if isinstance(r, SampleSet) else None for r in records]
    if any(s is None for s in sets):
        sets = prepare(records, aggregate=aggregate)  # type: ignore[arg-type]
    if not sets:
        raise TTScaleError("no records to select from")
    if any(s.scores is None for s in sets):
        chosen = [r for r in chosen if r not in SCORED_RULES]
    top = min(s.n for s in sets)
    if max_n is not None:
        if max_n < 1:
            raise TTScaleError(f"max_n={max_n!r} is out of range; accepted: >= 1")
        top = min(top, max_n)
    rng = np.random.default_rng(seed)
    orders_by_n: dict[int, np.ndarray] = {}
    per_problem: dict[str, list[np.ndarray]] = {}
    for s in sets:
        if s.n not in orders_by_n:
            orders_by_n[s.n] = _orderings(s.n, draws, exact_limit, rng)
        for name, vals in _evaluate(s, orders_by_n[s.n], top, chosen, window, threshold,
                                    confidence).items():
            per_problem.setdefault(name, []).append(vals)
    result: dict[str, dict[str, dict]] = {}
    for name in chosen:
        table = np.stack(per_problem[name])  # (P, top)
        samples = per_problem.get(name + ":samples")
        result[name] = {}
        for j in range(top):
            entry = _summary(table[:, j])
            if samples is not None:
                entry["mean_samples"] = float(np.stack(samples)[:, j].mean())
            result[name][str(j + 1)] = entry
    return result


def select_file(path: str | Path, **kwargs: Any) -> dict[str, dict[str, dict]]:
    """`select_rules` over a JSONL store (what `ttscale select` prints)."""
    return select_rules(load_samples(path), **kwargs)
