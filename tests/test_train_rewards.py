"""Verifiable RL rewards: correctness, format, step partial credit, the Kimi length penalty."""
from __future__ import annotations

import math

import pytest

from ttscale.errors import TTScaleError
from ttscale.tasks import get_task
from ttscale.types import Problem
from ttscale.train.rewards import (RewardConfig, RewardFunctionError, checked, correctness,
                                   kimi_length_rewards, oracle_reward_funcs, step_credit,
                                   total_rewards, well_formed, zero_std_fraction)

ARITH = get_task("arith")
# 8-2+9+6 -> =6+9+6 / =15+6 / =21 / A: 21  (four reference steps with the answer line)
P = Problem(id="t", task="arith", level=2, question="8-2+9+6", prompt="Q: 8-2+9+6\n", answer="21",
            solution="=6+9+6\n=15+6\n=21\nA: 21\n")
RIGHT = "=6+9+6\n=15+6\n=21\nA: 21\n"
WRONG_ANSWER = "=6+9+6\n=15+6\n=21\nA: 22\n"
WRONG_STEP = "=6+9+6\n=16+6\n=22\nA: 22\n"


def test_correct_completion_scores_on_every_term():
    assert correctness(ARITH, P, RIGHT) == 1.0
    assert well_formed(ARITH, RIGHT) == 1.0
    assert step_credit(ARITH, P, RIGHT) == 1.0
    cfg = RewardConfig(correct=1.0, format=0.1, partial=0.5)
    assert total_rewards(ARITH, [P], [RIGHT], cfg) == [pytest.approx(1.6)]


def test_wrong_answer_keeps_format_and_partial_credit_of_right_steps():
    assert correctness(ARITH, P, WRONG_ANSWER) == 0.0
    assert well_formed(ARITH, WRONG_ANSWER) == 1.0
    assert step_credit(ARITH, P, WRONG_ANSWER) == pytest.approx(3 / 4)
    # The second step is wrong: only the first counts.
    assert step_credit(ARITH, P, WRONG_STEP) == pytest.approx(1 / 4)


def test_stopping_early_earns_only_the_steps_taken():
    assert step_credit(ARITH, P, "=6+9+6\n") == pytest.approx(1 / 4)
    assert step_credit(ARITH, P, "") == 0.0


@pytest.mark.parametrize("text,finished", [
    ("=6+9+6\n=15+6\n=21\n", True),          # no answer line
    ("=6+9+6\nA: 21\nmore text\n", True),    # text after the answer
    ("A: 21\nA: 21\n", True),                # two answers
    ("=6+9+6\n=15+6\nA: \n", True),          # empty answer
    (RIGHT, False),                          # cut at max_completion_length, no EOS
    ("%%garbage", True),
])
def test_malformed_completions_get_no_format_reward(text, finished):
    assert well_formed(ARITH, text, finished) == 0.0
    assert total_rewards(ARITH, [P], [text], RewardConfig(correct=0.0, format=1.0), finished=[finished]) == [0.0]


def test_countdown_rewards():
    cd = get_task("countdown")
    p = next(q for q in cd.problems("test", 2, 50, 0) if q.question == "9 7 3 -> 1")
    assert correctness(cd, p, "3+7=10\n10-9=1\nA: (3+7)-9\n") == 1.0
    assert correctness(cd, p, "9-7=2\n2*3=6\nA: (9-7)*3\n") == 0.0
    assert step_credit(cd, p, "3+7=10\n10-9=1\nA: (3+7)-9\n") == 1.0


def test_length_penalty_matches_the_kimi_formula():
    # lambda = 0.5 - (len - min) / (max - min): 10 -> 0.5, 20 -> 0, 30 -> -0.5
    assert kimi_length_rewards([10, 20, 30], [True, True, True]) == [0.5, 0.0, -0.5]
    # Wrong answers get min(0, lambda): never a bonus for being short.
    assert kimi_length_rewards([10, 20, 30], [False, False, False]) == [0.0, 0.0, -0.5]
    assert kimi_length_rewards([10, 25, 30], [False, True, False]) == pytest.approx([0.0, 0.5 - 15 / 20, -0.5])
    assert kimi_length_rewards([7, 7, 7], [True, False, True]) == [0.0, 0.0, 0.0]


def test_length_penalty_is_computed_within_each_group():
    cfg = RewardConfig(correct=1.0, format=0.0, length_penalty=0.5)
    q = ARITH.problems("test", 1, 1, 0)[0]
    completions = [RIGHT, RIGHT, WRONG_ANSWER, f"={q.answer}\nA: {q.answer}\n", f"A: {q.answer}\n"]
    problems = [P, P, P, q, q]
    lengths = [10, 30, 20, 8, 4]
    got = total_rewards(ARITH, problems, completions, cfg, lengths=lengths)
    # Group P: lengths 10, 30, 20 -> lambdas 0.5, -0.5, 0 (the third is wrong: min(0, 0) = 0).
    # Group q: lengths 8, 4 -> lambdas -0.5, 0.5; both right.
    assert got == pytest.approx([1.25, 0.75, 0.0, 0.75, 1.25])


def test_trl_reward_functions_score_a_batch_like_total_rewards():
    q = ARITH.problems("test", 1, 1, 0)[0]
    cfg = RewardConfig(correct=1.0, format=0.1, partial=0.2, length_penalty=0.5)
    funcs, weights = oracle_reward_funcs(ARITH, {P.id: P, q.id: q}, cfg, eos_id=2)
    assert [f.__name__ for f in funcs] == ["correctness", "format", "partial_credit", "length"]
    completions = [RIGHT, WRONG_ANSWER, f"A: {q.answer}\n", "=1"]
    ids = [[5] * 9 + [2], [5] * 19 + [2], [5] * 4 + [2], [5] * 12]  # the last was cut: no EOS
    cols = dict(prompts=[P.prompt, P.prompt, q.prompt, q.prompt], completions=completions,
                completion_ids=ids, problem_id=[P.id, P.id, q.id, q.id])
    per_func = [f(**cols) for f in funcs]
    assert per_func[0] == [1.0, 0.0, 1.0, 0.0]
    assert per_func[1] == [1.0, 1.0, 1.0, 0.0]
    total = [sum(w * s[i] for w, s in zip(weights, per_func)) for i in range(4)]
    expected = total_rewards(ARITH, [P, P, q, q], completions, cfg, lengths=[len(i) for i in ids],
                             finished=[True, True, True, False])
    assert total == pytest.approx(expected)


def test_an_answer_to_an_auto_prompt_is_well_formed_only_with_its_mode_line():
    from ttscale.tasks.effort import apply_effort

    auto = apply_effort(P, "auto")
    funcs, _ = oracle_reward_funcs({"arith": ARITH}, {auto.id: auto}, RewardConfig(correct=1.0, format=1.0))
    completions = ["low\n" + RIGHT, "high\n" + WRONG_ANSWER, RIGHT]
    cols = dict(prompts=[auto.prompt] * 3, completions=completions, problem_id=[auto.id] * 3)
    assert [f(**cols) for f in funcs] == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    assert well_formed(ARITH, RIGHT, prompt=P.prompt) == 1.0  # a short prompt needs no mode line


def test_zero_std_groups_are_counted():
    assert zero_std_fraction([1, 1, 0, 1, 0.5, 0.5], ["a", "a", "b", "b", "c", "c"]) == pytest.approx(2 / 3)
    assert zero_std_fraction([0, 0, 0, 0], ["a", "a", "b", "b"]) == 1.0
    assert zero_std_fraction([0, 1, 0, 1], ["a", "a", "b", "b"]) == 0.0


def test_a_reward_function_that_raises_is_named_in_the_error():
    def flaky(prompts, completions, **_):
        raise KeyError("boom")

    with pytest.raises(RewardFunctionError, match="'flaky' raised KeyError"):
        checked(flaky)(prompts=["Q: 1+1\n"], completions=["A: 2\n"])
    with pytest.raises(RewardFunctionError, match="non-finite"):
        checked(lambda prompts, completions, **_: [math.nan], "nan")(prompts=["x"], completions=["y"])
    with pytest.raises(RewardFunctionError, match="returned 2 rewards for 1"):
        checked(lambda prompts, completions, **_: [0.0, 1.0], "two")(prompts=["x"], completions=["y"])


def test_bad_weights_are_rejected():
    with pytest.raises(TTScaleError, match="length_penalty"):
        RewardConfig(length_penalty=-1).check(ARITH)
    with pytest.raises(TTScaleError, match="at least one weight"):
        RewardConfig(correct=0, format=0).check(ARITH)
