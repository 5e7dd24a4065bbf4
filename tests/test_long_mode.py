"""The long, step-checkable mode (effort "high") of the built-in tasks and its step oracles."""
import random
import re

import pytest

from ttscale.errors import TTScaleError
from ttscale.strategies import params_at_effort
from ttscale.tasks import get_task
from ttscale.tasks.effort import AUTO_PREFIX, HIGH_PREFIX, apply_effort, check_effort, chosen_mode
from ttscale.tasks.long_arith import decompositions, operation_lines
from ttscale.types import Problem


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_long_traces_verify_step_by_step_and_reach_the_short_modes_answer(name):
    task, rng = get_task(name), random.Random(1)
    for level in task.levels:
        for p in task.problems("train", level, 40):
            high = apply_effort(p, "high")
            assert high.prompt.startswith(HIGH_PREFIX) and high.answer == p.answer
            for _ in range(2):  # two draws of the free choices (decompositions, dead ends)
                trace = task.long_solution(p, rng)
                steps = task.split_steps(trace)
                assert all(task.check_steps(high, steps)), trace
                assert task.answer_key(task.extract_answer(trace)) == \
                    task.answer_key(task.extract_answer(p.solution))
                assert task.is_correct(high, trace)


def test_a_product_has_two_decompositions_whose_hard_parts_differ():
    ways = decompositions(67, 58)
    assert len(ways) == 2
    by_b, by_a = (operation_lines(67, "*", 58, w) for w in range(2))
    assert by_b[0] == "67*58=67*8+67*50" and by_a[0] == "67*58=7*58+60*58"
    assert by_b[-1] == "536+3350=3886" and by_a[-1] == "406+3480=3886"
    products = [{line for line in way[1:] if "*" in line} for way in (by_b, by_a)]
    assert products[0].isdisjoint(products[1])  # no product step in common


def _arith(question: str) -> Problem:
    return apply_effort(Problem("x", "arith", 1, question, f"Q: {question}\n",
                                str(eval(question))), "high")  # noqa: S307 (a literal of the test)


def test_arith_oracle_flags_exactly_the_first_wrong_step():
    task = get_task("arith")
    p = _arith("23*4+15")
    right = ["3*4=12", "2*4+1=9", "23*4=92", "=92+15", "2+5=7", "9+1=10", "92+15=107", "=107",
             "A: 107"]
    assert task.check_steps(p, right) == [True] * 9
    carry_forgotten = ["3*4=12", "2*4=8", "23*4=82", "=82+15"]
    assert task.check_steps(p, carry_forgotten) == [True, False, False, False]
    wrong_column = right[:4] + ["2+1=3"] + right[5:]
    assert task.check_steps(p, wrong_column) == [True] * 4 + [False] * 5
    wrong_answer = right[:-1] + ["A: 108"]
    assert task.check_steps(p, wrong_answer) == [True] * 8 + [False]


def test_column_subtraction_borrows():
    assert operation_lines(1200, "-", 34) == ["10-4=6", "10-3-1=6", "2-0-1=1", "1-0=1",
                                              "1200-34=1166"]


def _countdown(numbers, target) -> Problem:
    q = " ".join(map(str, numbers)) + f" -> {target}"
    return apply_effort(Problem("x", "countdown", 2, q, f"Q: {q}\n", str(target),
                                "A: 0\n"), "high")


# the verdict after the target (training data since stop 29) and before it (the shipped models)
@pytest.mark.parametrize("miss, hit", [("vs 16 no", "vs 16 yes"), ("!= 16", "== 16")])
def test_countdown_dead_end_is_marked_and_never_the_answer(miss, hit):
    task = get_task("countdown")
    p = _countdown([3, 5, 2], 16)
    trace = ["5*3=15 left 15 2", f"15+2=17 {miss}", "back 3 5 2", "5+3=8 left 8 2", f"8*2=16 {hit}",
             "A: (5+3)*2"]
    assert task.check_steps(p, trace) == [True] * 6
    assert task.extract_answer("\n".join(trace)) == "(5+3)*2"
    only_dead_end = f"5*3=15 left 15 2\n15+2=17 {miss}\n"
    assert task.extract_answer(only_dead_end) is None  # a dead end is no answer
    assert not task.is_correct(p, only_dead_end)


def test_countdown_oracle_flags_false_claims_not_exploration():
    task = get_task("countdown")
    p = _countdown([3, 5, 2], 16)
    assert task.check_steps(p, ["5*3=16 left 16 2"]) == [False]  # arithmetic
    assert task.check_steps(p, ["5*4=20 left 20 3 2"]) == [False]  # 4 is not there
    assert task.check_steps(p, ["5*3=15 left 15 3"]) == [False]  # wrong numbers left
    assert task.check_steps(p, ["5*3=15 left 15 2", "15+2=17 vs 16 yes"]) == [True, False]
    assert task.check_steps(p, ["5+3=8 left 8 2", "8*2=16 vs 16 no"]) == [True, False]
    assert task.check_steps(p, ["5+3=8 left 8 2", "8*2=16 vs 17 yes"]) == [True, False]
    assert task.check_steps(p, ["5*3=15 left 15 2", "15+2=17 == 16"]) == [True, False]
    assert task.check_steps(p, ["5+3=8 left 8 2", "8*2=16 != 16"]) == [True, False]
    assert task.check_steps(p, ["5*3=15 left 15 2", "15+2=17 vs 16 no", "back 3 5 9"]) == [True, True, False]
    assert task.check_steps(p, ["5*3=15 left 15 2", "15+2=17 vs 16 no", "A: 15+2"]) == [True, True, False]


def test_effort_errors_name_the_accepted_values():
    with pytest.raises(TTScaleError, match="'medium'.*low, high, auto"):
        check_effort("medium")
    generic = Problem("x", "gsm8k", 0, "q", "Question: q\n", "1")
    for effort in ("high", "auto"):
        with pytest.raises(TTScaleError, match=f"effort '{effort}' needs a task with a long mode"):
            apply_effort(generic, effort)
    assert apply_effort(generic, "low") is generic


@pytest.mark.parametrize("effort", ["high", "auto"])
def test_long_efforts_raise_only_default_token_and_step_limits(effort):
    assert params_at_effort("majority", {"n": 4}, effort).max_tokens >= 768
    assert params_at_effort("majority", {"n": 4, "max_tokens": 300}, effort).max_tokens == 300
    assert params_at_effort("majority", {"n": 4}, "low").max_tokens < 768
    # a tree search over long chains needs as many steps as the chains have (arith level 5: ~50)
    assert params_at_effort("beam_search", {"n": 4}, effort).max_depth >= 50
    assert params_at_effort("beam_search", {"n": 4, "max_depth": 20}, effort).max_depth == 20
    assert params_at_effort("beam_search", {"n": 4}, "low").max_depth == 12


def test_countdown_traces_never_retry_a_move_from_the_same_state():
    task, rng = get_task("countdown"), random.Random(2)
    for p in task.problems("train", 4, 60):
        lines = task.split_steps(task.long_solution(p, rng))
        root = "back " + " ".join(map(str, p.meta["numbers"]))
        firsts = [lines[0]] + [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == root]
        moves = [re.match(r"(\d+)([-+*/])(\d+)=", line).groups() for line in firsts]
        # 3+5 and 5+3 are one move
        moves = [(min(a, b), op, max(a, b)) if op in "+*" else (a, op, b) for a, op, b in moves]
        assert len(moves) == len(set(moves)), lines


def test_chat_template_keeps_the_long_mode_prefix():
    from ttscale.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    render = lambda text: tok.apply_chat_template([{"role": "user", "content": text}],  # noqa: E731
                                                  tokenize=False)
    assert render("Think: 3+4*2") == "Think: 3+4*2\n"
    assert render("Auto: 3+4*2") == "Auto: 3+4*2\n"
    assert render("3+4*2") == "Q: 3+4*2\n"
    assert render("Q: 3+4*2") == "Q: 3+4*2\n"


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_an_auto_solution_names_its_mode_first_and_is_checked_in_that_mode(name):
    task = get_task(name)
    for p in task.problems("train", 3, 20):
        auto = apply_effort(p, "auto")
        assert auto.prompt == AUTO_PREFIX + p.prompt[len("Q: "):] and auto.answer == p.answer
        short, long = "low\n" + p.solution, auto.solution
        assert long.startswith("high\n") and chosen_mode(short) == "low" and chosen_mode(long) == "high"
        for text in (short, long):
            assert task.is_correct(auto, text) and all(task.check_steps(auto, task.split_steps(text)))
        # a chain under the other mode's name fails at its first step, the mode line itself is right
        swapped = "high\n" + p.solution
        assert task.check_steps(auto, task.split_steps(swapped))[:2] == [True, False]
        assert chosen_mode(p.solution) is None
        assert not task.check_steps(auto, task.split_steps(p.solution))[0]  # no mode line


def test_auto_training_text_draws_both_modes_after_the_question():
    task, rng = get_task("arith"), random.Random(0)
    pairs = [task.sample_training_text(rng, 2, "auto") for _ in range(200)]
    assert all(prompt.startswith(AUTO_PREFIX) for prompt, _ in pairs)
    modes = [chosen_mode(solution) for _, solution in pairs]
    assert 60 <= modes.count("high") <= 140 and modes.count("high") + modes.count("low") == 200

