"""Verifiers judged within problems: pairs of a right and a wrong sample of the same problem."""
from __future__ import annotations

import math

import pytest

from ttscale.eval.verifier_quality import (ProblemSamples, load_samples, save_samples,
                                           verifier_quality)
from ttscale.errors import TTScaleError
from ttscale.rewards import get_scorer
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.rewards.quality import pooled_auroc, step_groups, within_problem_auroc
from ttscale.tasks import get_task
from ttscale.types import Usage

ARITH = get_task("arith")


def test_only_problems_with_both_right_and_wrong_samples_count():
    groups = [([0.9, 0.2, 0.5], [True, False, True]),  # both pairs ordered right: 2 wins of 2
              ([0.1, 0.3], [True, True]),  # no wrong sample: skipped
              ([0.4, 0.4, 0.8], [True, False, False])]  # a tie (1/2) and a loss (0) of 2 pairs
    r = within_problem_auroc(groups)
    assert (r.groups, r.pairs) == (2, 4)
    assert r.auroc == pytest.approx((2 + 0.5) / 4)
    assert math.isnan(within_problem_auroc([([1.0], [True])]).auroc)


def test_first_error_groups_compare_scores_at_the_step_where_the_error_happens():
    scores = [[0.9, 0.8, 0.7], [0.9, 0.1, 0.6], [0.2, 0.5, 0.5]]
    oracle = [[True, True, True], [True, False, False], [False, False, False]]
    first = step_groups(scores, oracle, "first")
    assert first == [([0.9, 0.9, 0.2], [True, True, False])]
    # step 0: sample 3 errs there, samples 1 and 2 are right there; step 1: sample 2 errs,
    # sample 1 is right (sample 3 went wrong earlier and is left out)
    assert step_groups(scores, oracle, "first_error") == [([0.9, 0.9, 0.2], [True, True, False]),
                                                           ([0.8, 0.1], [True, False])]


class DifficultyScorer:
    """Reads only how hard the problem is (its level), never the solution."""

    name = "difficulty"

    def score(self, problem, solutions, completions=None):
        return ScoreBatch([Scored(1.0 / problem.level, [1.0 / problem.level]) for _ in solutions], Usage())


def _samples(level: int, n_right: int, n_wrong: int, k: int) -> list[ProblemSamples]:
    out = []
    for p in ARITH.problems("test", level, k):
        wrong = p.solution.replace(f"A: {p.answer}", f"A: {int(p.answer) + 1}")
        out.append(ProblemSamples(p, p.solution, [p.solution] * n_right + [wrong] * n_wrong, 1.0, 16.0))
    return out


def test_a_scorer_that_reads_only_difficulty_gets_half_within_problems():
    data = _samples(1, 12, 4, 6) + _samples(4, 3, 13, 6)  # easy problems are mostly right
    r = verifier_quality(ARITH, data, DifficultyScorer())
    assert r["within_problem_auroc"]["auroc"] == 0.5 and r["within_problem_auroc"]["groups"] == 12
    assert r["pooled_auroc"] > 0.7  # the pooled figure is fooled by difficulty
    oracle = verifier_quality(ARITH, data, get_scorer("oracle", task=ARITH))
    assert oracle["within_problem_auroc"]["auroc"] == 1.0
    assert oracle["best_of_n_acc"] == oracle["pass_at_n"] == 1.0
    assert oracle["greedy_acc"] == 1.0 and oracle["maj_acc"] == 0.5


def test_samples_round_trip(tmp_path):
    data = _samples(2, 1, 1, 2)
    save_samples(tmp_path / "s.jsonl", data)
    again = load_samples(tmp_path / "s.jsonl")
    assert [(d.problem, d.samples, d.greedy) for d in again] == [(d.problem, d.samples, d.greedy) for d in data]
    assert pooled_auroc([0.1, 0.9], [False, True]).auroc == 1.0


def test_stored_logprobs_let_the_likelihood_scorer_judge_stored_samples(tmp_path):
    p = ARITH.problems(level=1, n=1)[0]
    right, wrong = p.solution, "A: -1\n"
    d = ProblemSamples(p, right, [right, wrong], 1.0, 2.0, [-0.1] * 3, [[-0.1] * 3, [-2.0] * 3])
    save_samples(tmp_path / "s.jsonl", [d])
    r = verifier_quality(ARITH, load_samples(tmp_path / "s.jsonl"), get_scorer("likelihood"))
    assert r["within_problem_auroc"]["auroc"] == 1.0 and r["best_of_n_acc"] == 1.0
    with pytest.raises(TTScaleError, match="stored samples have none"):  # files from before logprobs
        verifier_quality(ARITH, [ProblemSamples(p, right, [right, wrong], 1.0, 2.0)], get_scorer("likelihood"))


def test_the_cascade_from_stored_samples_keeps_accepted_answers_and_escalates_flagged_ones():
    from ttscale.eval.verifier_quality import cascade_rows, cascade_summary

    data = _samples(2, 3, 1, 4)  # greedy right, samples mostly right
    for d in data[:2]:  # two problems whose greedy answer is wrong
        d.greedy = d.samples[-1]
    oracle = get_scorer("oracle", task=ARITH)
    rows = cascade_rows(ARITH, data, oracle, n=4, escalate="majority")
    assert [r.greedy_right for r in rows] == [False, False, True, True]
    assert all(r.escalated_right for r in rows)  # greedy's wrong vote is outvoted 3 to 2
    s = cascade_summary(rows, threshold=0.5)
    assert s["accuracy"] == 1.0 and s["greedy_acc"] == 0.5 and s["escalation_rate"] == 0.5
    assert s["mean_flops"] == s["greedy_flops"] + 16.0 / 2  # stored samples cost 16 per problem
    never = cascade_summary(rows, threshold=0.0)
    assert never["accuracy"] == 0.5 and never["mean_flops"] == never["greedy_flops"]
