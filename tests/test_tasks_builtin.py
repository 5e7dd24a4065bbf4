"""Built-in tasks: deterministic generators, exact answer and step verifiers, disjoint splits."""
from __future__ import annotations

import random
import re

import pytest

from ttscale.errors import TTScaleError
from ttscale.tasks import BUILTIN_TASKS, LEVELS, SPLITS, get_task, split_of
from ttscale.tasks.countdown import Countdown
from ttscale.types import Problem

TASK_LEVELS = [(name, level) for name in BUILTIN_TASKS for level in LEVELS]


def corrupt(step: str) -> str:
    """The step with its last number increased by one: always a wrong step for both tasks."""
    last = list(re.finditer(r"\d+", step))[-1]
    return step[: last.start()] + str(int(last.group()) + 1) + step[last.end():]


@pytest.mark.parametrize("name, level", TASK_LEVELS)
def test_generator_is_deterministic_in_seed(name, level):
    task = get_task(name)
    a, b = task.problems(level=level, n=20, seed=3), task.problems(level=level, n=20, seed=3)
    assert [(p.question, p.answer, p.solution, p.id) for p in a] == \
        [(p.question, p.answer, p.solution, p.id) for p in b]
    other = task.problems(level=level, n=20, seed=4)
    assert [p.question for p in a] != [p.question for p in other]
    assert all(p.level == level and p.task == name for p in a)


@pytest.mark.parametrize("name, level", TASK_LEVELS)
def test_every_reference_solution_verifies(name, level):
    task = get_task(name)
    for split in SPLITS:
        for p in task.problems(split=split, level=level, n=40):
            assert task.extract_answer(p.solution) is not None
            assert task.is_correct(p, p.solution), p
            steps = task.split_steps(p.solution)
            assert len(steps) >= 2 and task.check_steps(p, steps) == [True] * len(steps), p


@pytest.mark.parametrize("name, level", TASK_LEVELS)
def test_corrupted_solution_fails_at_the_corrupted_step_and_after(name, level):
    task = get_task(name)
    for p in task.problems(level=level, n=15, seed=1):
        steps = task.split_steps(p.solution)
        for k in range(len(steps)):
            bad = steps[:k] + [corrupt(steps[k])] + steps[k + 1:]
            assert task.check_steps(p, bad) == [True] * k + [False] * (len(steps) - k), (p, k)
            if k == len(steps) - 1:  # the final answer line
                assert not task.is_correct(p, "\n".join(bad))
        junk = steps[:1] + ["hello there"] + steps[1:]
        assert task.check_steps(p, junk) == [True] + [False] * len(steps)


@pytest.mark.parametrize("name, level", TASK_LEVELS)
def test_train_heldout_and_test_never_overlap(name, level):
    task = get_task(name)
    by_split = {s: task.problems(split=s, level=level, n=200) for s in SPLITS}
    questions = {s: {p.question for p in ps} for s, ps in by_split.items()}
    for s, ps in by_split.items():
        assert len(questions[s]) == len(ps) == 200  # distinct within a split
        assert all(split_of(f"{name}|{p.question}") == s for p in ps)
    assert not questions["train"] & questions["heldout"]
    assert not questions["train"] & questions["test"]
    assert not questions["heldout"] & questions["test"]
    rng = random.Random(0)
    for _ in range(200):  # training text never leaks a held-out or test problem
        prompt, solution = task.sample_training_text(rng, level)
        question = prompt.removeprefix("Q: ").removesuffix("\n")
        assert split_of(f"{name}|{question}") == "train"
        assert question not in questions["heldout"] | questions["test"]


def test_bad_split_level_or_task_is_an_error():
    task = get_task("arith")
    with pytest.raises(TTScaleError, match="split 'dev'; accepted: train, heldout, test"):
        task.problems(split="dev", level=1)
    with pytest.raises(TTScaleError, match="level 6; accepted: 1, 2, 3, 4, 5"):
        task.problems(level=6)
    with pytest.raises(TTScaleError, match="task 'algebra'; accepted: arith, countdown"):
        get_task("algebra")


def test_arith_checks_the_value_exactly():
    task = get_task("arith")
    p = task.problems(level=3, n=1)[0]
    assert task.check(p, p.answer) and task.check(p, f" {p.answer} ")
    assert not task.check(p, str(int(p.answer) + 1))
    assert not task.check(p, None) and not task.check(p, "six")
    assert task.answer_key("007") == task.answer_key("7")


def countdown_problem(numbers: list[int], target: int) -> Problem:
    question = " ".join(map(str, numbers)) + f" -> {target}"
    return Problem(id="t", task="countdown", level=2, question=question, prompt=f"Q: {question}\n",
                   answer=str(target), meta={"numbers": numbers, "target": target})


@pytest.mark.parametrize("numbers, target, answer", [
    ([2, 3, 4], 10, "2*3+4"), ([2, 3, 4], 10, "4*3-2"), ([2, 3, 4], 10, "4+3*2"),
    ([2, 3, 4], 10, "(3*4)-2"), ([2, 3, 4], 10, " 4 + 2 * 3 "),
    ([8, 4, 3], 6, "8/4*3"), ([8, 4, 3], 6, "3*8/4"), ([8, 4, 3], 6, "3/4*8"),
])
def test_countdown_accepts_any_valid_solution(numbers, target, answer):
    assert Countdown().check(countdown_problem(numbers, target), answer)


@pytest.mark.parametrize("answer, reason", [
    ("2*3*4", "evaluates to 24, not 10"),
    ("3*4-2+2", "must use each of [2, 3, 4] once"),  # 2 used twice
    ("4*3", "must use each of [2, 3, 4] once"),  # 2 unused
    ("2*3+4+0", "must use each of [2, 3, 4] once"),  # a number that was not given
    ("2**3+2", "powers are not allowed"),
    ("2*3+4.0", "unexpected character '.'"),
    (None, "no answer"),
])
def test_countdown_rejects_wrong_number_usage_and_values(answer, reason):
    task = Countdown()
    p = countdown_problem([2, 3, 4], 10)
    assert not task.check(p, answer)
    assert reason in task.explain(p, answer)


def test_countdown_judges_other_valid_step_sequences():
    task = Countdown()
    p = countdown_problem([2, 3, 4], 10)
    assert task.check_steps(p, ["4*3=12", "12-2=10", "A: 4*3-2"]) == [True, True, True]
    assert task.check_steps(p, ["3*2=6", "4+6=10"]) == [True, True]
    assert task.is_correct(p, "3*2=6\n4+6=10\n")  # no A: line: the steps are composed
    # Correct arithmetic that leaves the target unreachable, and a number not in the pool.
    assert task.check_steps(p, ["2+3=5", "5*4=20"]) == [False, False]
    assert task.check_steps(p, ["5+5=10"]) == [False]
    assert task.check_steps(p, ["3*2=7"]) == [False]
