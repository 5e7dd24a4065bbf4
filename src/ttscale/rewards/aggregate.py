"""Step-score aggregation, in one place: a solution's score from the scores of its steps.

`last` trusts the final step (a PRM's view of the whole solution), `min` is as strong as the
weakest step, `prod` treats step scores as independent probabilities of being right, `mean`
averages them. A solution without steps scores 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ttscale.errors import unknown

AGGREGATES = ("last", "min", "prod", "mean")


def check_aggregate(how: str) -> str:
    """`how` if it names an aggregation, else a TTScaleError listing them."""
    if how not in AGGREGATES:
        raise unknown("aggregate", how, AGGREGATES)
    return how


def aggregate(steps: Sequence[float], how: str = "last") -> float:
    """One score from the step scores of a solution."""
    check_aggregate(how)
    if not steps:
        return 0.0
    if how == "last":
        return float(steps[-1])
    if how == "min":
        return float(min(steps))
    if how == "prod":
        return float(math.prod(steps))
    return float(sum(steps) / len(steps))
