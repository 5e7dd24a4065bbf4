"""How well a verifier separates right from wrong solutions *of the same problem*.

Pooled metrics (AUROC or F1 over all solutions of all problems) reward a verifier that only
reads how hard a problem is: hard problems have more wrong samples, so scoring them low looks
discriminative. Selection among samples of one problem (best-of-N, weighted voting, a cascade's
accept/reject) needs the opposite: a right sample scored above a wrong sample of the same
problem. `within_problem_auroc` measures exactly that, over problems that have both.

Each group is one problem's samples: their scores and whether each is right. Ties count 1/2,
so a verifier that gives every sample of a problem the same score gets exactly 0.5.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Group = tuple[Sequence[float], Sequence[bool]]  # (scores, right) of the samples of one problem


@dataclass
class PairAUROC:
    """P(score of a right sample > score of a wrong one), ties 1/2, over the pairs counted."""

    auroc: float  # nan when no group has both kinds
    pairs: int  # (right, wrong) pairs counted
    groups: int  # problems (or step positions) that had both kinds

    def to_dict(self) -> dict[str, float | int]:
        return {"auroc": self.auroc, "pairs": self.pairs, "groups": self.groups}


def _pair_wins(scores: Sequence[float], right: Sequence[bool]) -> tuple[float, int]:
    pos = [s for s, r in zip(scores, right) if r]
    neg = [s for s, r in zip(scores, right) if not r]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins, len(pos) * len(neg)


def within_problem_auroc(groups: Sequence[Group]) -> PairAUROC:
    """AUROC over (right, wrong) pairs of the same group; groups without both kinds are skipped.

    Every pair counts once, so a problem with more mixed pairs weighs more.
    """
    wins, pairs, used = 0.0, 0, 0
    for scores, right in groups:
        if len(scores) != len(right):
            raise ValueError("each group needs one verdict per score")
        w, n = _pair_wins(scores, right)
        if n:
            wins, pairs, used = wins + w, pairs + n, used + 1
    return PairAUROC(wins / pairs if pairs else math.nan, pairs, used)


def pooled_auroc(scores: Sequence[float], right: Sequence[bool]) -> PairAUROC:
    """AUROC over all (right, wrong) pairs regardless of problem (the figure that misleads)."""
    w, n = _pair_wins(scores, right)
    return PairAUROC(w / n if n else math.nan, n, 1 if n else 0)


def first_wrong(verdicts: Sequence[bool]) -> int:
    """Index of the first wrong step, or -1 when every step is right (ProcessBench's convention)."""
    return next((i for i, ok in enumerate(verdicts) if not ok), -1)


def step_groups(step_scores: Sequence[Sequence[float]], oracle: Sequence[Sequence[bool]],
                at: str) -> list[Group]:
    """Groups for a step-level within-problem AUROC of one problem's samples.

    `at="first"`: every sample's first step, right or wrong by the oracle (one group).
    `at="first_error"`: for each step index k where some sample makes its first error, the
    samples whose first error is at k (wrong) against the samples whose step k is right, each
    scored at step k (one group per k): can the verifier see the error where it happens?
    """
    if at == "first":
        pairs = [(s[0], o[0]) for s, o in zip(step_scores, oracle) if s and o]
        return [([p[0] for p in pairs], [p[1] for p in pairs])] if pairs else []
    if at != "first_error":
        raise ValueError(f"unknown step type {at!r}; accepted: first, first_error")
    firsts = [first_wrong(o) for o in oracle]
    out: list[Group] = []
    for k in sorted({f for f in firsts if f >= 0}):
        scores, right = [], []
        for s, o, f in zip(step_scores, oracle, firsts):
            if len(s) <= k or len(o) <= k:
                continue
            if f == k:
                scores.append(s[k]), right.append(False)
            elif o[k]:
                scores.append(s[k]), right.append(True)
        out.append((scores, right))
    return out
