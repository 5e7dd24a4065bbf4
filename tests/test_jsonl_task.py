"""The JSONL task for real data (GSM8K, MATH-500) and its math grading."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from ttscale.errors import TTScaleError
from ttscale.tasks import get_task
from ttscale.tasks.grading import MathGrader, answer_key, extract_final_answer, last_boxed
from ttscale.tasks.jsonl import JsonlTask

DATA = Path(os.environ.get("TTSCALE_DATA_DIR",
                           Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
DATA_FILES = {"gsm8k_test.jsonl": 1319, "math500_test.jsonl": 500}
# Records whose gold answer does not grade as correct against their own reference solution,
# by problem id, with the reason. Empty: math-verify reads every MATH-500 and GSM8K answer.
KNOWN_EXCEPTIONS: dict[str, str] = {}

GSM8K_RECORD = {"question": "Tom has 3 apples and buys 4 more. How many apples?",
                "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7"}
MATH_RECORD = {"problem": "What is $\\frac{1}{2}+\\frac{1}{3}$?",
               "solution": "Common denominator.\n\nSo $\\frac{3}{6}+\\frac{2}{6}="
                           "\\boxed{\\frac{5}{6}}$.",
               "answer": "\\frac{5}{6}", "subject": "Algebra", "level": 2,
               "unique_id": "test/algebra/1.json"}


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))
    return path


@pytest.fixture(scope="module")
def grader():
    with MathGrader(workers=2) as g:
        yield g


@pytest.fixture(scope="module")
def patient_grader():
    """A grader whose deadline (and math-verify's own, a third of it) a loaded machine cannot
    miss on honest answers: the gold-answer check is about reading, not about speed."""
    with MathGrader(workers=2, timeout_s=30.0) as g:
        yield g


@pytest.fixture
def math_task(tmp_path):
    records = [dict(MATH_RECORD, level=lv, answer=str(lv), unique_id=f"u{i}")
               for i, lv in enumerate([3, 1, 3, 5, 3])]
    task = JsonlTask(write_jsonl(tmp_path / "m.jsonl", records))
    yield task
    task.close()


# -- every record of the shipped data grades as correct against its own solution ------------
def data_file(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the public data sets live in ../shared/data, "
                    "outside the repository")
    return path


@pytest.mark.parametrize("name", sorted(DATA_FILES))
def test_every_gold_answer_grades_correct_against_its_reference_solution(name,
                                                                       patient_grader):
    grader = patient_grader
    task = JsonlTask(data_file(name), grader=grader)
    timeouts = grader.timeouts
    problems = task.problems(n=None)
    assert len(problems) == DATA_FILES[name]
    extracted = [task.extract_answer(p.solution or "") for p in problems]
    # The task's own check (number and normal-form shortcuts, then math-verify) ...
    verdicts = task.check_many(problems, extracted)
    # ... and math-verify alone, so the shortcuts cannot hide an answer it cannot read.
    verified = grader.verify_many([(p.answer, a or "") for p, a in zip(problems, extracted)])
    failures = {p.id: (p.answer, a) for p, a, ok, mv in zip(problems, extracted, verdicts, verified)
                if not (ok and mv) and p.id not in KNOWN_EXCEPTIONS}
    assert not failures, f"{len(failures)} gold answers graded wrong: {list(failures.items())[:10]}"
    assert grader.timeouts == timeouts


@pytest.mark.parametrize("name", sorted(DATA_FILES))
def test_another_problems_answer_grades_wrong(name, grader):
    """The grader is not a yes-machine: each gold answer against the next problem's answer."""
    problems = JsonlTask(data_file(name), grader=grader).problems(n=120)
    # math-verify reads "x=5" as 5 (see test_equivalent_answers_are_correct): skip equations.
    pairs = [(p.answer, q.answer) for p, q in zip(problems, problems[1:])
             if answer_key(p.answer) != answer_key(q.answer) and "=" not in p.answer + q.answer]
    assert len(pairs) > 100
    assert not any(grader.equal_many(pairs))
    assert not any(grader.verify_many(pairs))


# -- reading files -----------------------------------------------------------------------------
def test_gsm8k_record_becomes_a_problem(tmp_path):
    task = JsonlTask(write_jsonl(tmp_path / "g.jsonl", [GSM8K_RECORD]))
    (p,) = task.problems()
    assert (p.answer, p.level, p.meta["format"]) == ("7", 0, "gsm8k")
    assert p.question == GSM8K_RECORD["question"]
    assert p.solution == "He has 3+4=7 apples.\n#### 7"  # calculator notes dropped
    assert p.prompt.endswith(f"Question: {p.question}\nAnswer: Let's think step by step.\n")
    assert "\\boxed{...}" in p.prompt
    assert task.levels == () and not task.has_step_oracle


def test_math_record_becomes_a_problem(tmp_path):
    rec = dict(MATH_RECORD, level="Level 4")  # the original MATH spelling of a level
    task = JsonlTask(write_jsonl(tmp_path / "m.jsonl", [rec]))
    (p,) = task.problems()
    assert (p.answer, p.level, p.solution) == ("\\frac{5}{6}", 4, rec["solution"])
    assert p.meta["unique_id"] == "test/algebra/1.json" and p.meta["subject"] == "Algebra"
    assert task.levels == (4,)


def test_format_is_detected_per_line(tmp_path):
    task = JsonlTask(write_jsonl(tmp_path / "mixed.jsonl", [GSM8K_RECORD, "", MATH_RECORD]))
    problems = task.problems()
    assert [p.meta["format"] for p in problems] == ["gsm8k", "math"]
    assert [p.meta["line"] for p in problems] == [1, 3]
    assert len({p.id for p in problems}) == 2


def test_problems_are_the_first_n_in_file_order_at_the_level_asked(math_task):
    assert [p.meta["unique_id"] for p in math_task.problems(n=3)] == ["u0", "u1", "u2"]
    assert [p.meta["unique_id"] for p in math_task.problems(level=3, n=2)] == ["u0", "u2"]
    assert len(math_task.problems(n=None)) == 5 and len(math_task.problems(n=99)) == 5
    assert math_task.problems(n=4, seed=1) == math_task.problems(n=4, seed=2)
    assert math_task.levels == (1, 3, 5)


def test_bad_problem_requests_are_errors(math_task, tmp_path):
    with pytest.raises(TTScaleError, match="level 2.*accepted: 1, 3, 5"):
        math_task.problems(level=2)
    with pytest.raises(TTScaleError, match="split 'train'.*accepted: test"):
        math_task.problems(split="train")
    with pytest.raises(TTScaleError, match="n=-1"):
        math_task.problems(n=-1)
    gsm = JsonlTask(write_jsonl(tmp_path / "g.jsonl", [GSM8K_RECORD]))
    with pytest.raises(TTScaleError, match="level=1: .* has no levels"):
        gsm.problems(level=1)


@pytest.mark.parametrize("line, message", [
    ('{"question": "q", "answer": "no marker"', "malformed JSON"),
    ('[1, 2]', "expected a JSON object, got list"),
    ('{"text": "q"}', "not a GSM8K record .* nor a MATH record"),
    ('{"question": "q", "answer": "It is 5."}', "a GSM8K 'answer' must end with a '#### N' line"),
    ('{"problem": "p", "answer": "5", "level": 9}', "level 9 is not a MATH level"),
])
def test_malformed_line_names_the_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GSM8K_RECORD, MATH_RECORD, line])
    with pytest.raises(TTScaleError, match=f"bad.jsonl, line 3: {message}"):
        JsonlTask(path)


def test_missing_or_empty_file_is_an_error(tmp_path):
    with pytest.raises(TTScaleError, match="nope.jsonl.*does not exist"):
        JsonlTask(tmp_path / "nope.jsonl")
    with pytest.raises(TTScaleError, match="nope.jsonl.*does not exist"):
        get_task(str(tmp_path / "nope.jsonl"))
    with pytest.raises(TTScaleError, match="holds no problems"):
        JsonlTask(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))


def test_get_task_opens_a_jsonl_path(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [GSM8K_RECORD])
    task = get_task(str(path))
    assert isinstance(task, JsonlTask) and task.problems()[0].answer == "7"


# -- answers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("completion, answer", [
    ("3+4=7\n#### 1,000", "1,000"),
    ("so $x=\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{1}, then \\boxed{\\sqrt{\\{2\\}}}", "\\sqrt{\\{2\\}}"),
    ("done: \\boxed{5}, or maybe \\boxed{6", "5"),  # the last box never closes
    ("\\boxed 7", "7"),
    ("\\fbox{8}", "8"),
    ("Thus the answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("The final answer is: **42**", "42"),
    ("Final Answer: 18 \n", "18"),
    ("=7\nA: 7\n", "7"),
    ("#### 5\n\\boxed{6}", "5"),  # GSM8K's marker wins over a box
    ("\\boxed{6}\nThe answer is 7", "6"),  # a box wins over a sentence
    ("I do not know.", None),
    ("#### \nA:  ", None),
])
def test_extract_answer(completion, answer):
    assert extract_final_answer(completion) == answer


def test_extraction_is_linear_on_hostile_text():
    # Quadratic work on 20,000 unclosed boxes would take minutes.
    assert last_boxed("\\boxed{" * 20_000) is None
    assert extract_final_answer("\\boxed{1}" + "\\boxed{" * 20_000) == "1"
    assert extract_final_answer("A:" + " " * 20_000 + "x") == "x"


@pytest.mark.parametrize("gold, answer", [
    ("1000", "1,000"), ("18", "18.0"), ("18", "$18"), ("-3", "-3.00"), ("0.5", ".5"),
    ("\\frac{1}{2}", "0.5"), ("\\frac{5}{6}", "\\dfrac{5}{6}"), ("18", "\\frac{36}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("x^2+2x+1", "(x+1)^2"),
    ("5", "x=5"),
])
def test_equivalent_answers_are_correct(patient_grader, gold, answer):
    assert patient_grader.equal(gold, answer)


@pytest.mark.parametrize("gold, answer", [
    ("1000", "100"), ("18", "18.01"), ("1000", "1,0000"), ("\\frac{1}{2}", "0.51"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi)"), ("x^2+2x+1", "(x-1)^2"),
    ("5", None), ("5", ""), ("5", "5" + "+0" * 500),  # too long to parse

])
def test_different_answers_are_wrong(grader, gold, answer):
    assert not grader.equal(gold, answer)


def test_check_grades_completions_of_both_formats(tmp_path, grader):
    task = JsonlTask(write_jsonl(tmp_path / "mixed.jsonl", [GSM8K_RECORD, MATH_RECORD]),
                     grader=grader)
    gsm, math = task.problems()
    assert task.is_correct(gsm, "3 and 4 make 7.\n#### 7")
    assert task.is_correct(gsm, "The answer is $7$.")
    assert not task.is_correct(gsm, "#### 8")
    assert task.is_correct(math, "So the sum is $\\boxed{\\frac{10}{12}}$.")
    assert not task.is_correct(math, "So the sum is $\\boxed{\\frac{2}{5}}$.")
    assert not task.is_correct(math, "no answer here")


def test_answer_key_groups_equal_answers():
    assert answer_key("1,000") == answer_key("1000.0") == answer_key("$1000") == "1000"
    assert answer_key("\\dfrac{1}{2}") == answer_key("$\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert answer_key("\\left( 3, \\pi \\right)") == answer_key("(3,\\pi)")
    assert answer_key("5") != answer_key("6") and answer_key(None) is None


# -- hostile answers cannot hang the grader --------------------------------------------------
@pytest.mark.parametrize("hostile", ["9^{9^{9^{9}}}", "(" * 40 + "1" + ")" * 40, "9!!!!"])
def test_hostile_answer_is_graded_wrong_and_returns(grader, hostile):
    assert not grader.verify("5", hostile)
    assert grader.verify("\\frac{1}{2}", "1/2")  # still serving


def test_grader_kills_a_worker_past_its_deadline_and_recovers():
    with MathGrader(timeout_s=1.0) as g:
        assert not g.verify("5", "10^{10^{10}}+1")
        assert g.timeouts == 1
        assert g.verify("\\frac{1}{2}", "0.5")  # a fresh worker


def test_grader_works_from_threads(grader):
    """math-verify's own timeouts need the main thread; the worker processes do not."""
    results: list[bool] = []
    threads = [threading.Thread(target=lambda a=a: results.append(grader.verify("6", a)))
               for a in ("2*3", "9^{9^{9^{9}}}", "12/2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True, True]


# -- steps -----------------------------------------------------------------------------------
def test_split_steps_on_blank_lines_else_lines(tmp_path):
    task = JsonlTask(write_jsonl(tmp_path / "g.jsonl", [GSM8K_RECORD]))
    assert task.split_steps("a\nb\n\nc\n \n\nd") == ["a\nb", "c", "d"]
    assert task.split_steps("a\nb\n#### 3\n") == ["a", "b", "#### 3"]
    assert task.step_delimiter == "\n\n"
    with pytest.raises(NotImplementedError):
        task.check_steps(task.problems()[0], ["a"])


# -- few-shot prompts for base models ----------------------------------------------------------
def _gsm8k(i: int) -> dict[str, str]:
    return {"question": f"Ann has {i} pens and gets {i} more. How many pens?",
            "answer": f"She has {i}+{i}=<<{i}+{i}={2 * i}>>{2 * i} pens.\n#### {2 * i}"}


@pytest.fixture
def gsm8k_files(tmp_path):
    test = write_jsonl(tmp_path / "toy_test.jsonl", [_gsm8k(1), _gsm8k(2)])
    # the train file happens to hold a test problem (records 0): it must never be an exemplar
    write_jsonl(tmp_path / "toy_train.jsonl", [_gsm8k(2), _gsm8k(10), _gsm8k(11), _gsm8k(12)])
    return test


def test_few_shot_prompt_takes_worked_examples_from_the_train_file_beside(gsm8k_files):
    task = get_task(str(gsm8k_files), shots=2)
    p = task.problems()[0]
    assert p.prompt.endswith(f"Question: {p.question}\nAnswer:")
    blocks = p.prompt.split("\n\n")
    assert len(blocks) == 3  # two exemplars, then the question
    assert blocks[0] == ("Question: Ann has 10 pens and gets 10 more. How many pens?\n"
                         "Answer: She has 10+10=20 pens.\n#### 20")  # calculator notes dropped
    assert "11 pens" in blocks[1]
    questions = {q.question for q in task.problems()}
    assert not any(q in blocks[0] + blocks[1] for q in questions)  # never a test problem
    assert task.shots_from == gsm8k_files.with_name("toy_train.jsonl")
    assert "\nQuestion:" in task.stop
    zero = get_task(str(gsm8k_files)).problems()[0]
    assert "\\boxed" in zero.prompt and "Question: Ann has 10" not in zero.prompt


def test_few_shot_exemplars_from_a_file_the_user_gives(tmp_path):
    test = write_jsonl(tmp_path / "math500.jsonl", [MATH_RECORD])
    shots = write_jsonl(tmp_path / "exemplars.jsonl",
                        [dict(MATH_RECORD, problem="What is $1+1$?", answer="2",
                              solution="We add: $\\boxed{2}$.")])
    task = JsonlTask(test, shots=1, shots_from=shots)
    prompt = task.problems()[0].prompt
    assert prompt.startswith("Question: What is $1+1$?\nAnswer: We add: $\\boxed{2}$.\n\n")
    task.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"shots": 2, "shots_from": "SELF"}, "is the test file itself"),
    ({"shots": 9}, "has only 3 worked examples"),
    ({"shots": -1}, "shots=-1 is out of range"),
    ({"shots": 0, "shots_from": "SELF"}, "shots=0"),
])
def test_bad_few_shot_requests_are_one_line_errors(gsm8k_files, kwargs, message):
    if kwargs.get("shots_from") == "SELF":
        kwargs = dict(kwargs, shots_from=str(gsm8k_files))
    with pytest.raises(TTScaleError, match=message) as e:
        get_task(str(gsm8k_files), **kwargs)
    assert "\n" not in str(e.value)


def test_few_shot_needs_a_train_file_and_a_jsonl_task(tmp_path):
    alone = write_jsonl(tmp_path / "problems.jsonl", [GSM8K_RECORD])
    with pytest.raises(TTScaleError, match="--shots-from"):
        get_task(str(alone), shots=1)
    with pytest.raises(TTScaleError, match="for JSONL tasks"):
        get_task("arith", shots=2)


def test_shipped_gsm8k_few_shot_prompt_uses_the_train_split():
    task = get_task(str(data_file("gsm8k_test.jsonl")), shots=4)
    assert task.shots_from.name == "gsm8k_train.jsonl"
    prompt = task.problems(n=1)[0].prompt
    assert prompt.count("Question:") == 5 and prompt.count("\n#### ") == 4
    assert prompt.startswith("Question: Natalia sold clips")  # the train split's first record


# -- answers read the benchmark's way --------------------------------------------------------
@pytest.mark.parametrize("completion, answer", [
    (" He pays 3*4=12 dollars.\n#### 12\n\nQuestion: Ann has 5 pens", "12"),
    (" He pays 3*4=12 dollars, then 12+6=18.\nQuestion: what is 99?", "18"),  # last number
    (" Let's think step by step.", None),  # no answer, never a line of prose
    ("Question: x\nAnswer: Let's think step by step.", None),
    (" so the total is \\boxed{1,000}.", "1,000"),
])
def test_gsm8k_answer_is_hashes_or_the_last_number(gsm8k_files, completion, answer):
    assert get_task(str(gsm8k_files), shots=1).extract_answer(completion) == answer


@pytest.mark.parametrize("completion, answer", [
    ("We add.\n\nSo $\\boxed{\\frac{5}{6}}$.\n\nQuestion: next $\\boxed{3}$", "\\frac{5}{6}"),
    ("Answer: Let's think step by step.", None),
    ("The final answer is $\\frac{5}{6}$.", "\\frac{5}{6}"),
    ("It is 7, and then 8 more.", None),  # MATH reads boxes, not stray numbers
])
def test_math_answer_is_the_box(tmp_path, completion, answer):
    task = JsonlTask(write_jsonl(tmp_path / "m.jsonl", [MATH_RECORD]))
    assert task.extract_answer(completion) == answer
    task.close()


def test_a_stated_answer_that_is_prose_is_no_answer():
    assert extract_final_answer("Answer: Let's think step by step.") is None
    assert extract_final_answer("The answer is 42.\nAnswer: we are done") == "42"
