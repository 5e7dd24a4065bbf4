"""The Task abstraction: problems, prompts, answer extraction, exact checking, step splitting."""
from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod

from ttscale.errors import TTScaleError, unknown
from ttscale.tasks.effort import (AUTO_PREFIX, HIGH_PREFIX, LOW_PREFIX, MODE_LINES, check_effort,
                                  steps_in_mode)
from ttscale.types import Problem

SPLITS = ("train", "heldout", "test")
LEVELS = (1, 2, 3, 4, 5)
STEP_DELIMITER = "\n"
ANSWER_PREFIX = "A: "
_ANSWER_LINE = re.compile(r"^A:\s*(.*?)\s*$", re.MULTILINE)


def split_of(key: str) -> str:
    """The split a problem belongs to, a pure function of its content.

    Buckets of a hash: 80% train, 10% held-out, 10% test. Because the split is decided by the
    problem itself, the three splits can never share a problem, whatever seeds are used.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 10
    return "train" if bucket < 8 else ("heldout" if bucket == 8 else "test")


class Task(ABC):
    """A family of checkable problems."""

    name: str = ""
    description: str = ""
    levels: tuple[int, ...] = LEVELS
    step_delimiter: str = STEP_DELIMITER
    has_step_oracle: bool = False
    answer_checkable: bool = False  # the final answer can be checked from the problem alone

    # -- problems -------------------------------------------------------------------------
    @abstractmethod
    def problems(self, split: str = "test", level: int | None = None, n: int = 100,
                 seed: int = 0) -> list[Problem]:
        """`n` problems of `split` at `level`, deterministic in (split, level, seed)."""

    # -- completions ----------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The final answer stated in a completion, or None when there is none."""
        found = _ANSWER_LINE.findall(completion)
        return found[-1] if found else None

    @abstractmethod
    def check(self, problem: Problem, answer: str | None) -> bool:
        """Whether `answer` (as returned by extract_answer) is exactly right."""

    def is_correct(self, problem: Problem, completion: str) -> bool:
        return self.check(problem, self.extract_answer(completion))

    def split_steps(self, completion: str) -> list[str]:
        """The non-empty steps of a (partial) solution."""
        return [s for s in completion.split(self.step_delimiter) if s.strip()]

    def check_steps(self, problem: Problem, steps: list[str]) -> list[bool]:
        """Oracle verdict per step: is the solution still on a path to the right answer?

        Only built-in tasks have one; once a step is wrong every later step is wrong too.
        """
        raise NotImplementedError(f"task {self.name!r} has no step oracle")

    def answer_key(self, answer: str | None) -> str | None:
        """A normal form of an answer, so that votes for equal answers are counted together."""
        return None if answer is None else answer.strip()


class BuiltinTask(Task):
    """A task whose problems are generated from (seed, level) and whose steps can be checked."""

    has_step_oracle = True

    def problems(self, split: str = "test", level: int | None = None, n: int = 100,
                 seed: int = 0) -> list[Problem]:
        if split not in SPLITS:
            raise unknown("split", split, SPLITS)
        if level not in self.levels:
            raise unknown("level", level, self.levels)
        rng = random.Random(f"{self.name}/{split}/{level}/{seed}")
        out: list[Problem] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 10_000:
                raise TTScaleError(f"{self.name} level {level} has only {len(out)} distinct "
                                   f"{split} problems; ask for at most that many")
            p = self.generate(rng, level)
            if p.question in seen or split_of(f"{self.name}|{p.question}") != split:
                continue
            seen.add(p.question)
            out.append(Problem(id=f"{self.name}-L{level}-{split}-{seed}-{len(out)}", task=p.task,
                               level=p.level, question=p.question, prompt=p.prompt,
                               answer=p.answer, solution=p.solution, meta=p.meta))
        return out

    @abstractmethod
    def generate(self, rng: random.Random, level: int) -> Problem:
        """One random problem at `level` (its id is assigned by `problems`)."""

    def long_solution(self, problem: Problem, rng: random.Random | None = None) -> str:
        """The long-mode (`effort="high"`) solution of a problem; `rng` draws its free choices."""
        raise NotImplementedError(f"task {self.name!r} has no long mode")

    def check_steps(self, problem: Problem, steps: list[str]) -> list[bool]:
        mode, chain = steps_in_mode(problem.prompt, steps)  # an auto solution's mode line is right
        if mode is None:  # an auto solution that names no mode is wrong from its first step
            return [False] * len(steps)
        return [True] * (len(steps) - len(chain)) + self.check_chain(problem, mode, chain)

    @abstractmethod
    def check_chain(self, problem: Problem, mode: str, steps: list[str]) -> list[bool]:
        """`check_steps` of a chain in `mode` ("low" / "high")."""

    def sample_training_text(self, rng: random.Random, level: int,
                             effort: str = "low") -> tuple[str, str]:
        """A (prompt, solution) pair from the train split at `effort`, for supervised fine-tuning."""
        check_effort(effort)
        while True:
            p = self.generate(rng, level)
            if split_of(f"{self.name}|{p.question}") == "train":
                mode = rng.choice(("low", "high")) if effort == "auto" else effort
                chain = self.long_solution(p, rng) if mode == "high" else p.solution or ""
                if effort == "auto":  # the mode is drawn at random: which pays is left to RL
                    return AUTO_PREFIX + p.prompt[len(LOW_PREFIX):], MODE_LINES[mode] + chain
                if effort == "high":
                    return HIGH_PREFIX + p.prompt[len(LOW_PREFIX):], chain
                return p.prompt, chain
