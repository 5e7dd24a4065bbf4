"""A task read from a JSONL file of real problems: GSM8K or MATH-500 records.

Each line is one JSON object, its format detected per line:

- GSM8K: `question`, and `answer`, a worked solution whose last `#### N` line is the answer.
  No level (problems carry level 0). Calculator notes `<<48/2=24>>` are dropped from the
  reference solution.
- MATH (MATH-500): `problem`, `answer`, optional `level` (1-5, or "Level 3"), `solution`,
  `subject`, `unique_id`.

The whole file is the `test` split, in file order: `problems(n=K)` is its first K problems
(at the level asked for); `seed` is ignored, as nothing is sampled.

Prompts: zero-shot instructions for chat / instruction-following models (`PROMPT`), or with
`shots=K` for base models K worked examples ("Question: ...\nAnswer: <solution>") taken from a
train file (`shots_from`; for `*test*.jsonl` by default the `*train*.jsonl` beside it), never
from the test problems, then "Question: ...\nAnswer:". Generation stops before a next
"Question:" (`stop`, applied by `strategies.solve` and `eval.evaluate`). The final answer is
read the benchmark's way: GSM8K `#### N`, else a box, else the last number; MATH the last
`\\boxed{}` (or an "answer is X" that is not prose); a completion without one has no answer.
Answers are graded with math-verify, under a deadline, in worker processes
(`grading.MathGrader`), so `check` is safe from any thread.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.tasks import grading
from ttscale.tasks.base import Task
from ttscale.types import Problem

# The prompt given to a completion or chat model: one instruction, the question, and the start
# of the answer. Blank lines between steps let `split_steps` and step-wise search find them.
PROMPT = ("Solve the problem. Put a blank line between steps and write the final answer as "
          "\\boxed{{...}}.\n\nQuestion: {question}\nAnswer: Let's think step by step.\n")
FEW_SHOT_EXAMPLE = "Question: {question}\nAnswer: {solution}\n\n"
FEW_SHOT_PROMPT = "Question: {question}\nAnswer:"
STOP = ("\nQuestion:",)  # a model continuing the pattern starts the next question
MATH_LEVELS = (1, 2, 3, 4, 5)
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


class JsonlTask(Task):
    """Problems with reference answers from a GSM8K- or MATH-format JSONL file."""

    step_delimiter = "\n\n"
    has_step_oracle = False

    stop = STOP

    def __init__(self, path: str | Path, timeout_s: float = grading.DEFAULT_TIMEOUT_S,
                 workers: int = 1, grader: grading.MathGrader | None = None, shots: int = 0,
                 shots_from: str | Path | None = None):
        """`timeout_s` and `workers` configure the task's own grader; or pass one to share.
        `shots` worked examples from `shots_from` precede each question (0: zero-shot)."""
        self.path = Path(path)
        self.name = str(path)
        self._problems = _load(self.path)
        self.levels = tuple(sorted({p.level for p in self._problems if p.level}))
        self.formats = tuple(sorted({p.meta["format"] for p in self._problems}))
        self.shots = shots
        self.shots_from: Path | None = None
        if shots:
            self.shots_from, header = _few_shot_header(self.path, self._problems, shots,
                                                       shots_from)
            self._problems = [replace(p, prompt=header + FEW_SHOT_PROMPT.format(
                question=p.question)) for p in self._problems]
        elif shots_from is not None:
            raise TTScaleError(f"shots_from={str(shots_from)!r} is given but shots=0; "
                               "accepted: shots >= 1 with shots_from")
        shot_note = f", {shots}-shot from {self.shots_from}" if shots else ""
        self.description = (f"{len(self._problems)} {'+'.join(self.formats)} problems from "
                            f"{path}{shot_note}")
        self.grader = grader or grading.MathGrader(timeout_s=timeout_s, workers=workers)

    # -- problems -------------------------------------------------------------------------
    def problems(self, split: str = "test", level: int | None = None, n: int | None = 100,
                 seed: int = 0) -> list[Problem]:
        """The first `n` problems of the file (all with n=None), at `level` if given."""
        if split != "test":
            raise unknown("split", split, ["test (a JSONL file is one test set)"])
        if n is not None and n < 0:
            raise out_of_range("n", n, "0 or more, or None for all")
        chosen = self._problems
        if level is not None:
            if not self.levels:
                raise TTScaleError(f"level={level!r}: {self.name} has no levels (GSM8K "
                                   "format); accepted: level=None")
            if level not in self.levels:
                raise unknown("level", level, self.levels)
            chosen = [p for p in chosen if p.level == level]
        return list(chosen if n is None else chosen[:n])

    # -- completions ----------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The benchmark's way for a one-format file (GSM8K or MATH), else the general one."""
        completion = completion.split(STOP[0])[0]  # a next question is not part of the answer
        if self.formats == ("gsm8k",):
            return grading.extract_gsm8k_answer(completion)
        if self.formats == ("math",):
            return grading.extract_math_answer(completion)
        return grading.extract_final_answer(completion)

    def check(self, problem: Problem, answer: str | None) -> bool:
        return self.grader.equal(problem.answer, answer)

    def check_many(self, problems: Sequence[Problem], answers: Sequence[str | None]) -> list[bool]:
        """`check` for many pairs at once, spread over the grader's worker processes."""
        return self.grader.equal_many([(p.answer, a) for p, a in zip(problems, answers)])

    def answer_key(self, answer: str | None) -> str | None:
        return grading.answer_key(answer)

    def split_steps(self, completion: str) -> list[str]:
        """Paragraphs when the text has blank lines (MATH style), else lines (GSM8K style)."""
        parts = _BLANK_LINE.split(completion) if _BLANK_LINE.search(completion) else \
            completion.split("\n")
        return [s.strip() for s in parts if s.strip()]

    def close(self) -> None:
        """Stop the grader's worker processes."""
        self.grader.close()


def _load(path: Path) -> list[Problem]:
    if not path.is_file():
        raise TTScaleError(f"task file {str(path)!r} does not exist (or is not a file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TTScaleError(f"cannot read task file {str(path)!r}: {e}") from None
    problems = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TTScaleError(f"{path}, line {lineno}: malformed JSON ({e.msg}, column "
                               f"{e.colno})") from None
        problems.append(_problem(record, path, lineno))
    if not problems:
        raise TTScaleError(f"task file {str(path)!r} holds no problems")
    return problems


def _problem(record: Any, path: Path, lineno: int) -> Problem:
    where = f"{path}, line {lineno}"
    if not isinstance(record, dict):
        raise TTScaleError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if _strings(record, "question", "answer"):
        gold = _gsm8k_answer(record["answer"])
        if gold is None:
            raise TTScaleError(f"{where}: a GSM8K 'answer' must end with a '#### N' line")
        question, fmt, level = record["question"], "gsm8k", 0
        solution = _CALCULATOR.sub("", record["answer"])
        meta: dict[str, Any] = {}
    elif _strings(record, "problem", "answer"):
        question, fmt, gold = record["problem"], "math", record["answer"].strip()
        level = _math_level(record.get("level"), where)
        solution = record.get("solution") if isinstance(record.get("solution"), str) else None
        meta = {k: record[k] for k in ("subject", "unique_id") if k in record}
    else:
        raise TTScaleError(f"{where}: not a GSM8K record (question, answer ending in '#### N') "
                           f"nor a MATH record (problem, answer, level); keys: {sorted(record)}")
    if not question.strip() or not gold:
        raise TTScaleError(f"{where}: empty question or answer")
    meta.update(format=fmt, line=lineno)
    return Problem(id=f"{path.stem}-{lineno}", task=str(path), level=level, question=question,
                   prompt=PROMPT.format(question=question), answer=gold, solution=solution,
                   meta=meta)


def _few_shot_header(path: Path, problems: list[Problem], shots: int,
                     shots_from: str | Path | None) -> tuple[Path, str]:
    """The exemplar file and the text of `shots` worked examples: its first records with a
    solution whose question is not one of `problems`."""
    if shots < 0:
        raise out_of_range("shots", shots, ">= 0 (0: zero-shot)")
    source = Path(shots_from) if shots_from is not None else _train_file_beside(path)
    if source is None:
        raise TTScaleError(f"shots={shots} needs worked examples: give shots_from (--shots-from "
                           f"TRAIN.jsonl, GSM8K or MATH records with solutions); none found "
                           f"beside {str(path)!r}")
    if source.resolve() == path.resolve():
        raise TTScaleError(f"shots_from={str(source)!r} is the test file itself; accepted: a "
                           "train file (exemplars never come from the test problems)")
    tested = {_normal(p.question) for p in problems}
    chosen = [e for e in _load(source) if e.solution and _normal(e.question) not in tested]
    if len(chosen) < shots:
        raise TTScaleError(f"shots={shots}: {source} has only {len(chosen)} worked examples "
                           "that are not test problems")
    return source, "".join(FEW_SHOT_EXAMPLE.format(question=e.question.strip(),
                                                   solution=e.solution.strip())
                           for e in chosen[:shots])


def _train_file_beside(path: Path) -> Path | None:
    """`gsm8k_train.jsonl` for `gsm8k_test.jsonl` (the name with test -> train), if it exists."""
    if "test" not in path.name:
        return None
    candidate = path.with_name(path.name.replace("test", "train"))
    return candidate if candidate.is_file() else None


def _normal(question: str) -> str:
    return " ".join(question.split()).lower()


def _strings(record: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(record.get(k), str) for k in keys)


def _gsm8k_answer(text: str) -> str | None:
    marks = re.findall(r"####[ \t]*([^\n]*)", text)
    return marks[-1].strip() or None if marks else None


def _math_level(value: Any, where: str) -> int:
    """MATH levels are 1-5, written 3 or "Level 3"; a missing or unknown ("Level ?") level
    is 0."""
    if value is None or value == "Level ?":
        return 0
    text = str(value).removeprefix("Level").strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) not in MATH_LEVELS:
        raise TTScaleError(f"{where}: level {value!r} is not a MATH level; accepted: 1-5")
    return int(text)
