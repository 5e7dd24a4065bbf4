"""Difficulty without an answer key: a cheap probe, and bins by quantiles of it.

The probe draws the first `k` samples (default 4) of a problem and measures how much they
agree: agreement = (votes of the most frequent answer) / k, where a sample with no answer
does not vote. Difficulty = 1 - agreement: 0 when all k samples agree, 1 when none states an
answer. It needs no answer key, and its samples are not wasted: voting strategies continue
from them (sample once, select many).

Problems are binned by quantiles of difficulty, as Snell et al. (2024) did with five bins.
With few problems (fewer than `MIN_PER_BIN` per bin) fewer bins are used, and because the
probe takes only k + 1 distinct values, quantile edges that coincide are merged, so a bin
never splits problems of equal difficulty.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

PROBE_SAMPLES = 4
MAX_BINS = 5
MIN_PER_BIN = 8


def agreement(keys: Sequence[str | None]) -> float:
    """Votes of the most frequent answer over the number of samples (no answer: no vote)."""
    if not keys:
        return 0.0
    counts = Counter(k for k in keys if k is not None)
    return (max(counts.values()) if counts else 0) / len(keys)


def difficulty(keys: Sequence[str | None]) -> float:
    """1 - agreement of the probe samples' answers, in [0, 1]."""
    return 1.0 - agreement(keys)


def num_bins(n_problems: int, max_bins: int = MAX_BINS, min_per_bin: int = MIN_PER_BIN) -> int:
    """Five bins, or fewer so that each holds at least `min_per_bin` problems on average."""
    return max(1, min(max_bins, n_problems // min_per_bin))


def quantile_edges(values: Sequence[float], n_bins: int) -> list[float]:
    """Interior bin edges at the quantiles of `values`, duplicates merged (at most n_bins-1)."""
    if n_bins <= 1 or len(values) == 0:
        return []
    qs = np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, n_bins + 1)[1:-1])
    lo, hi = min(values), max(values)
    edges = sorted({float(q) for q in qs if lo < q <= hi})
    return edges


def assign_bin(value: float, edges: Sequence[float]) -> int:
    """Bin index of `value`: bin b holds edges[b-1] <= value < edges[b] (bin 0 the easiest)."""
    return int(np.searchsorted(np.asarray(edges, dtype=float), value, side="right"))
