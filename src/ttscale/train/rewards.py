"""Verifiable rewards for RL: correctness, answer format, step partial credit, length penalty.

Every reward comes from the task's exact oracle, so there is nothing to hack but the task itself.
Each reward is also offered as a TRL reward function, a plain callable
`(prompts, completions, completion_ids, **columns) -> list[float]`, so `GRPOTrainer` logs each
one apart (`rewards/correctness/mean` is the batch accuracy).

The total reward of a completion is::

    correct * [answer right] + format * [well formed] + partial * step_credit
        + length_penalty * kimi_length_reward

Length reward (Kimi k1.5, arXiv:2501.12599): within the group of samples of one prompt,
lambda_i = 0.5 - (len_i - min_len) / (max_len - min_len); a correct sample gets lambda_i, a
wrong one min(0, lambda_i); all-equal lengths give 0. With weight 1 it moves a reward of 1 by at
most +-0.5, so correctness still dominates: among right answers the shortest wins, and a wrong
answer is never rewarded for being short.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ttscale.errors import TTScaleError, out_of_range
from ttscale.tasks import Task
from ttscale.tasks.effort import AUTO_PREFIX, chosen_mode
from ttscale.types import Problem

RewardFunc = Callable[..., list[float]]


@dataclass
class RewardConfig:
    """Weights of the reward terms; a weight of 0 switches a term off."""

    correct: float = 1.0  # 1 when the final answer checks against the oracle
    format: float = 0.1  # 1 when the completion ends with exactly one `A: ...` line and EOS
    partial: float = 0.0  # fraction of the reference steps verified before the first wrong one
    length_penalty: float = 0.0  # Kimi k1.5 group-relative length reward (0 = off)

    def check(self, task: Task) -> None:
        for name in ("correct", "format", "partial", "length_penalty"):
            w = getattr(self, name)
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise out_of_range(f"reward weight {name}", w, "a finite number >= 0")
        if self.partial > 0 and not task.has_step_oracle:
            raise TTScaleError(f"partial credit needs a step oracle, and task {task.name!r} has none; "
                               "accepted: partial=0 for this task, or a built-in task")
        if self.correct + self.format + self.partial + self.length_penalty == 0:
            raise TTScaleError("every reward weight is 0; accepted: at least one weight > 0")


# -- one completion ----------------------------------------------------------------------------
def correctness(task: Task, problem: Problem, completion: str) -> float:
    """1.0 when the completion's final answer is right, else 0.0."""
    return 1.0 if task.is_correct(problem, completion) else 0.0


def well_formed(task: Task, completion: str, finished: bool = True, prompt: str = "") -> float:
    """1.0 when the completion stopped by itself and its last non-empty line is its only answer line.

    Text after the answer, several answers, an empty answer or a truncated completion score 0, and
    so does an answer to a prompt that leaves the mode to the model (`Auto: `) whose first line
    names no mode.
    """
    if prompt.startswith(AUTO_PREFIX) and chosen_mode(completion) is None:
        return 0.0
    lines = [ln for ln in completion.split("\n") if ln.strip()]
    answers = [ln for ln in lines if ln.lstrip().startswith("A:")]
    if not finished or len(answers) != 1 or not lines[-1].lstrip().startswith("A:"):
        return 0.0
    answer = task.extract_answer(completion)
    return 1.0 if answer else 0.0


def step_credit(task: Task, problem: Problem, completion: str) -> float:
    """Steps the oracle verifies before the first wrong one, over the reference solution's steps.

    Dividing by the reference length (not by the completion's own) means stopping early earns
    only the credit of the steps actually taken; a fully right solution scores 1.
    """
    if not task.has_step_oracle:
        return 0.0
    steps = task.split_steps(completion)
    ref = len(task.split_steps(problem.solution)) if problem.solution else len(steps)
    if not steps or ref == 0:
        return 0.0
    good = 0
    for ok in task.check_steps(problem, steps):
        if not ok:
            break
        good += 1
    return min(good, ref) / ref


# -- groups ------------------------------------------------------------------------------------
def kimi_length_rewards(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Kimi k1.5 length reward of one group of samples of the same prompt (see module doc)."""
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness flags")
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    out = []
    for n, ok in zip(lengths, correct):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out


def groups_of(keys: Sequence[str]) -> list[list[int]]:
    """Indices of the samples of each prompt, in order of first appearance."""
    found: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        found.setdefault(k, []).append(i)
    return list(found.values())


def zero_std_fraction(rewards: Sequence[float], keys: Sequence[str], tol: float = 1e-6) -> float:
    """Fraction of groups (samples sharing a key) whose rewards are all equal: no signal in GRPO."""
    groups = groups_of(keys)
    if not groups:
        return 0.0
    flat = sum(1 for g in groups if max(rewards[i] for i in g) - min(rewards[i] for i in g) <= tol)
    return flat / len(groups)


# -- TRL reward functions ----------------------------------------------------------------------
class RewardFunctionError(RuntimeError):
    """A reward function raised or returned something that is not one finite float per sample."""


def checked(fn: RewardFunc, name: str | None = None) -> RewardFunc:
    """Wrap a TRL reward function so that a failure names the function and the completion."""
    name = name or getattr(fn, "__name__", "reward")

    def wrapper(prompts, completions, **kwargs):
        try:
            out = fn(prompts=prompts, completions=completions, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            sample = completions[0] if completions else ""
            raise RewardFunctionError(f"reward function {name!r} raised {type(e).__name__}: {e} "
                                      f"(batch of {len(completions)}, first completion {sample!r:.80})") from e
        out = list(out)
        if len(out) != len(completions):
            raise RewardFunctionError(f"reward function {name!r} returned {len(out)} rewards for "
                                      f"{len(completions)} completions")
        bad = [r for r in out if r is None or not math.isfinite(float(r))]
        if bad:
            raise RewardFunctionError(f"reward function {name!r} returned a non-finite reward {bad[0]!r}")
        return [float(r) for r in out]

    wrapper.__name__ = name
    return wrapper


def _finished(ids: Sequence[int] | None, eos_id: int | None) -> bool:
    return True if ids is None or eos_id is None else (len(ids) > 0 and ids[-1] == eos_id)


def oracle_reward_funcs(tasks: Task | Mapping[str, Task], problems: dict[str, Problem], cfg: RewardConfig,
                        eos_id: int | None = None) -> tuple[list[RewardFunc], list[float]]:
    """TRL reward functions and weights; the dataset column `problem_id` keys `problems`.

    `tasks` is one task, or a mapping from `Problem.task` to the task that checks it (a run
    over several tasks). Correctness is always included (weight possibly 0) so that accuracy
    is logged.
    """
    by_name = dict(tasks) if isinstance(tasks, Mapping) else None
    for t in (by_name.values() if by_name is not None else [tasks]):
        cfg.check(t)

    def task_of(p: Problem) -> Task:
        if by_name is None:
            return tasks
        if p.task not in by_name:
            raise RewardFunctionError(f"problem {p.id!r} is of task {p.task!r}, not one of {sorted(by_name)}")
        return by_name[p.task]

    def lookup(ids: Sequence[str]) -> list[Problem]:
        try:
            return [problems[i] for i in ids]
        except KeyError as e:
            raise RewardFunctionError(f"unknown problem_id {e.args[0]!r} in the batch") from None

    def own(problem_id, completions):
        return list(zip(lookup(problem_id), completions))

    def correct_fn(prompts, completions, problem_id, **_):
        return [correctness(task_of(p), p, c) for p, c in own(problem_id, completions)]

    def format_fn(prompts, completions, problem_id, completion_ids=None, **_):
        ids = completion_ids or [None] * len(completions)
        return [well_formed(task_of(p), c, _finished(i, eos_id), p.prompt)
                for (p, c), i in zip(own(problem_id, completions), ids)]

    def partial_fn(prompts, completions, problem_id, **_):
        return [step_credit(task_of(p), p, c) for p, c in own(problem_id, completions)]

    def length_fn(prompts, completions, problem_id, completion_ids=None, gen_length=None, **_):
        # gen_length (engine rollout): the policy's own tokens, without a prompt it chose
        lengths = (list(gen_length) if gen_length else [len(i) for i in completion_ids] if completion_ids
                   else [len(c) for c in completions])
        ok = [task_of(p).is_correct(p, c) for p, c in own(problem_id, completions)]
        out = [0.0] * len(completions)
        for g in groups_of(problem_id):
            for i, r in zip(g, kimi_length_rewards([lengths[i] for i in g], [ok[i] for i in g])):
                out[i] = r
        return out

    funcs: list[RewardFunc] = [checked(correct_fn, "correctness")]
    weights = [float(cfg.correct)]
    for w, fn, name in ((cfg.format, format_fn, "format"), (cfg.partial, partial_fn, "partial_credit"),
                        (cfg.length_penalty, length_fn, "length")):
        if w > 0:
            funcs.append(checked(fn, name))
            weights.append(float(w))
    return funcs, weights


def total_rewards(task: Task, problems: Sequence[Problem], completions: Sequence[str],
                  cfg: RewardConfig, lengths: Sequence[int] | None = None,
                  finished: Sequence[bool] | None = None) -> list[float]:
    """The weighted total reward of each completion, grouped by problem id (for tests and reports)."""
    cfg.check(task)
    n = len(completions)
    lengths = list(lengths) if lengths is not None else [len(c) for c in completions]
    finished = list(finished) if finished is not None else [True] * n
    ok = [task.is_correct(p, c) for p, c in zip(problems, completions)]
    total = [cfg.correct * float(o) for o in ok]
    if cfg.format:
        total = [t + cfg.format * well_formed(task, c, f, p.prompt)
                 for t, p, c, f in zip(total, problems, completions, finished)]
    if cfg.partial:
        total = [t + cfg.partial * step_credit(task, p, c) for t, p, c in zip(total, problems, completions)]
    if cfg.length_penalty:
        for g in groups_of([p.id for p in problems]):
            for i, r in zip(g, kimi_length_rewards([lengths[i] for i in g], [ok[i] for i in g])):
                total[i] += cfg.length_penalty * r
    return total
