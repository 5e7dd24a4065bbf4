"""The safe evaluator reads untrusted arithmetic exactly and rejects hostile input with a reason."""
from __future__ import annotations

from fractions import Fraction

import pytest

from ttscale.tasks.countdown import Countdown
from ttscale.tasks.safe_eval import MAX_CHARS, MAX_DEPTH, UnsafeExpression, evaluate, parse
from ttscale.types import Problem


@pytest.mark.parametrize("text, value", [
    ("(5+3)*2", 16), ("2+3*4", 14), ("(2+3)*4", 20), ("10-4-3", 3), ("7/2", Fraction(7, 2)),
    ("3/4*8", 6), ("-3+5", 2), ("-(2-5)", 3), (" 1 +\t2 ", 3), ("((((1))))", 1),
])
def test_evaluates_exactly(text, value):
    assert evaluate(text) == value


def test_reports_numbers_and_operations():
    parsed = parse("(5+3)*2")
    assert parsed.numbers == (5, 3, 2) and parsed.ops == 2 and parsed.value == 16


@pytest.mark.parametrize("text, reason", [
    ("9**9**9", "powers are not allowed"),
    ("2^1000", "powers are not allowed"),
    ("(" * 10_000, f"longer than {MAX_CHARS} characters"),
    ("(" * 100 + "1" + ")" * 100, f"nesting deeper than {MAX_DEPTH}"),
    ("-" * 100 + "1", f"nesting deeper than {MAX_DEPTH}"),
    ("1+" * 1000 + "1", f"longer than {MAX_CHARS} characters"),
    ("9" * 13, "more than 12 digits"),
    ("999999999999*999999999999*999999999999", "intermediate value exceeds"),
    ("1/0", "division by zero"),
    ("1/(2-2)", "division by zero"),
    ("__import__('os').system('ls')", "unexpected character '_'"),
    ("1e9", "unexpected character 'e'"),
    ("5!", "unexpected character '!'"),
    ("\uff13+\uff15", "unexpected character"),  # fullwidth digits are not ASCII digits
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("1+", "expression ends early"),
    ("(1+2", "expression ends early"),
    ("1+2)", "unexpected ')' after the expression"),
    ("1 2", "unexpected '2' after the expression"),
    ("*3", "unexpected '*'"),
    ("(1+2]", "unexpected character ']'"),
])
def test_rejects_hostile_or_malformed_input_with_a_reason(text, reason):
    with pytest.raises(UnsafeExpression) as err:
        parse(text)
    assert reason in err.value.reason


def test_countdown_explains_a_hostile_answer():
    p = Problem(id="t", task="countdown", level=1, question="2 5 -> 10", prompt="Q: 2 5 -> 10\n",
                answer="10")
    task = Countdown()
    assert task.explain(p, "9**9**9**9") == "powers are not allowed; use + - * / and parentheses"
    assert not task.is_correct(p, "A: " + "(" * 5000 + "2*5" + ")" * 5000)
    assert task.is_correct(p, "A: 2*5")


@pytest.mark.parametrize("a, b", [
    ("29+19", "19+29"), ("(29)+19", "29+19"), ("3*(4+5)", "(5+4)*3"), ("10-(3-2)", "2+10-3"),
    ("8/(2/3)", "3*8/2"), ("(1+2)+3", "3+(2+1)"), ("-3+5", "5-3"),
])
def test_answers_equal_up_to_order_share_one_vote_key(a, b):
    task = Countdown()
    assert task.answer_key(a) == task.answer_key(b)


@pytest.mark.parametrize("a, b", [
    ("3*(4+5)", "3*4+3*5"), ("10-3", "3-10"), ("8/2", "2/8"), ("50-2", "29+19"), ("2*3", "2+3"),
])
def test_different_expressions_keep_different_vote_keys(a, b):
    task = Countdown()
    assert task.answer_key(a) != task.answer_key(b)


def test_countdown_majority_counts_reordered_answers_together():
    from ttscale.eval.evaluate import majority_answer

    # three ways of writing one answer outvote two copies of another
    answers = ["19+29", "29+19", "(19+29)", "50-2", "50-2"]
    assert majority_answer(Countdown(), answers) == "19+29"
    assert Countdown().answer_key("no expression here") == "no expression here"
