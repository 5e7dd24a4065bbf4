"""Voting over candidates' final answers, shared by majority, weighted majority and stopping.

Answers are grouped by `task.answer_key`, so equal answers written differently vote together;
candidates without an answer do not vote. Ties go to the answer that appeared first (in sample
order), so a vote is deterministic given its samples.
"""
from __future__ import annotations

from collections.abc import Sequence

from ttscale.strategies.base import Candidate
from ttscale.tasks.base import Task


def tally_keys(keys: Sequence[str | None],
               weights: Sequence[float] | None = None) -> dict[str, tuple[float, int]]:
    """answer key -> (total weight, index of its first vote), in order of first appearance;
    a None key (no answer) does not vote."""
    out: dict[str, tuple[float, int]] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        w = 1.0 if weights is None else float(weights[i])
        total, first = out.get(key, (0.0, i))
        out[key] = (total + w, first)
    return out


def tally(task: Task, candidates: Sequence[Candidate],
          weights: Sequence[float] | None = None) -> dict[str, tuple[float, int]]:
    """`tally_keys` of the candidates' answer keys."""
    return tally_keys([task.answer_key(c.answer) for c in candidates], weights)


def vote_keys(keys: Sequence[str | None], weights: Sequence[float] | None = None) -> int | None:
    """Index of the first vote of the winning answer; None when nothing answers."""
    table = tally_keys(keys, weights)
    if not table:
        return None
    # highest total, then earliest first appearance
    _, first = max(table.values(), key=lambda tf: (tf[0], -tf[1]))
    return first


def vote(task: Task, candidates: Sequence[Candidate],
         weights: Sequence[float] | None = None) -> int | None:
    """Index of the first candidate of the winning answer; None when no candidate answers."""
    return vote_keys([task.answer_key(c.answer) for c in candidates], weights)


def top_two_keys(keys: Sequence[str | None]) -> tuple[int, int]:
    """Vote counts of the two most frequent answers (0 where there is none)."""
    counts = sorted((int(t) for t, _ in tally_keys(keys).values()), reverse=True)
    counts += [0, 0]
    return counts[0], counts[1]


def top_two(task: Task, candidates: Sequence[Candidate]) -> tuple[int, int]:
    """`top_two_keys` of the candidates' answer keys."""
    return top_two_keys([task.answer_key(c.answer) for c in candidates])
