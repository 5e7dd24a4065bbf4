"""Choices scored on problems they were not made on (K folds by problem).

A headline that picks "the best configuration" and scores it on the same problems reports the
luck of the pick. `cv_choose` (best accuracy within a cost) and `cv_cheapest` (least cost at an
accuracy) pick on the other folds and score on the held-out one; they serve the small-vs-large
comparison, the latency headline and the adaptive-stopping headline of `ttscale sweep`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ttscale.planner.plan import folds_of


def problem_matrix(records: Sequence[dict[str, Any]], model: str, problems: set[str] | None = None,
                   field: str = "flops") -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Per problem x deployable configuration of `model`: accuracy and `field` (FLOPs,
    latency_s, ...), each the mean over the record's seeds (sample orders). Only
    configurations measured on every problem are kept."""
    cells: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["model"] != model or r.get("oracle") or (problems is not None and r["problem_id"] not in problems):
            continue
        value = r.get(field, r.get("wall_s")) if field == "latency_s" else r[field]
        cells[r["config"]][r["problem_id"]].append((float(r["correct"]), float(value)))
    probs = sorted({p for c in cells.values() for p in c})
    configs = sorted(c for c, d in cells.items() if len(d) == len(probs))
    acc = np.array([[np.mean([a for a, _ in cells[c][p]]) for c in configs] for p in probs])
    val = np.array([[np.mean([v for _, v in cells[c][p]]) for c in configs] for p in probs])
    return probs, configs, acc.reshape(len(probs), len(configs)), val.reshape(len(probs), len(configs))


def _held_out(problems: Sequence[str], acc: np.ndarray, cost: np.ndarray,
              pick: Callable[[np.ndarray, np.ndarray, np.ndarray], int | None],
              groups: Sequence[str] | None, k: int, seed: int) -> dict[str, Any]:
    """For each group and fold, `pick(mean accuracy, mean cost, train_mask)` over the group's
    problems in the other folds chooses a column (None: nothing, scored as no answer at no
    cost), scored on the fold's problems of the group. Returns the held-out accuracy and cost
    (means over all problems) and the choices, {group: [column per fold]}."""
    n = len(problems)
    if n == 0 or acc.shape[1] == 0:
        return {"accuracy": None, "cost": None, "choices": {}}
    groups = list(groups) if groups is not None else [""] * n
    k = max(2, min(k, n))
    folds = folds_of(list(problems), k, seed)
    got_acc, got_cost = np.zeros(n), np.zeros(n)
    choices: dict[str, list[int | None]] = defaultdict(list)
    for g in sorted(set(groups)):
        mine = np.array([x == g for x in groups])
        for f in range(k):
            test, train = mine & (folds == f), mine & (folds != f)
            if not test.any() or not train.any():
                continue
            j = pick(acc[train].mean(axis=0), cost[train].mean(axis=0), train)
            choices[g].append(j)
            if j is not None:
                got_acc[test], got_cost[test] = acc[test, j], cost[test, j]
    return {"accuracy": float(got_acc.mean()), "cost": float(got_cost.mean()),
            "choices": dict(choices)}


def cv_choose(problems: Sequence[str], acc: np.ndarray, cost: np.ndarray,
              limit: Callable[[np.ndarray], float], k: int = 5, seed: int = 0) -> dict[str, Any]:
    """For each fold, the column of best mean accuracy on the other folds among those whose
    mean cost there is within `limit(train_mask)` (ties: the cheaper; None when none is,
    scored as no answer at no cost); scored on the fold. Returns the held-out accuracy and
    cost (means over all problems) and the choices, one per fold."""
    def pick(a: np.ndarray, c: np.ndarray, train: np.ndarray) -> int | None:
        ok = np.flatnonzero(c <= limit(train) * (1 + 1e-9))
        return int(min(ok, key=lambda j: (-a[j], c[j]))) if len(ok) else None

    out = _held_out(problems, acc, cost, pick, None, k, seed)
    return {**out, "choices": out["choices"].get("", [])}


def cv_cheapest(problems: Sequence[str], acc: np.ndarray, cost: np.ndarray,
                target: Callable[[np.ndarray], float], groups: Sequence[str] | None = None,
                k: int = 5, seed: int = 0) -> dict[str, Any]:
    """For each fold and group (a task: each gets its own choice), the column of least mean cost
    on the other folds among those whose mean accuracy there reaches `target(train_mask)` (the
    most accurate one when none does); scored on the fold. Returns the held-out accuracy and
    cost (means over all problems) and the choices, {group: [column per fold]}."""
    def pick(a: np.ndarray, c: np.ndarray, train: np.ndarray) -> int:
        ok = np.flatnonzero(a >= target(train) - 1e-12)
        return int(min(ok, key=lambda j: (c[j], -a[j]))) if len(ok) else int(np.argmax(a))

    return _held_out(problems, acc, cost, pick, groups, k, seed)
