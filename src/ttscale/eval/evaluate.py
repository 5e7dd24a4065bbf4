"""Greedy, majority-vote and pass@n accuracy of a model on a task level: the family's yardstick."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ttscale.engine.base import Generator
from ttscale.engine.task_stops import with_task_stops
from ttscale.errors import TTScaleError
from ttscale.strategies.base import Candidate
from ttscale.strategies.voting import vote
from ttscale.tasks import Task
from ttscale.tasks.effort import chosen_mode, effort_of
from ttscale.types import GenerationRequest, Problem, SamplingParams

MAX_TOKENS = 160


@dataclass
class EvalResult:
    model: str
    task: str
    level: int | None
    num_problems: int
    n: int
    greedy_acc: float
    maj_acc: float
    pass_at_n: float
    mean_tokens: float  # mean completion tokens of the greedy solutions
    flops: float  # everything generated for this row
    effort: str = "low"  # the thinking mode the problems were asked in (tasks/effort.py)
    # effort "auto": share of the greedy / sampled solutions that chose the long mode (else None)
    greedy_long_share: float | None = None
    sampled_long_share: float | None = None
    pass_at_k: dict[int, float] | None = None  # unbiased pass@k for k = 1, 2, 4, ... <= n

    def to_dict(self) -> dict:
        return asdict(self)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_answer(task: Task, answers: list[str | None]) -> str | None:
    """The most common answer (by task.answer_key); ties go to the answer seen first."""
    candidates = [Candidate(text="", answer=a) for a in answers]
    winner = vote(task, candidates)
    return None if winner is None else answers[winner]


def evaluate(generator: Generator, task: Task, problems: list[Problem], n: int = 16,
             temperature: float = 1.0, seed: int = 0, max_tokens: int = MAX_TOKENS) -> EvalResult:
    """Greedy accuracy, maj@n, pass@n and pass@k (k <= n) of `generator` on `problems`, in one
    batched call (at effort "auto" also the shares of answers in the long mode)."""
    greedy = [GenerationRequest(p.prompt, SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens))
              for p in problems]
    sampled = [GenerationRequest(p.prompt, SamplingParams(n=n, temperature=temperature, seed=seed + i,
                                                          max_tokens=max_tokens))
               for i, p in enumerate(problems)] if n > 0 else []
    results = with_task_stops(generator, task).generate(greedy + sampled)
    for r in results:
        if r.error:
            raise TTScaleError(f"generation failed: {r.error}")
    g_res, s_res = results[: len(problems)], results[len(problems):]
    greedy_ok = [task.is_correct(p, r.completions[0].text) for p, r in zip(problems, g_res)]
    maj_ok, right = [], []  # per problem: majority right?, how many samples right
    for p, r in zip(problems, s_res):
        answers = [task.extract_answer(c.text) for c in r.completions]
        maj_ok.append(task.check(p, majority_answer(task, answers)))
        right.append(sum(task.check(p, a) for a in answers))
    k = max(len(problems), 1)
    auto = bool(problems) and effort_of(problems[0].prompt) == "auto"
    return EvalResult(
        model=generator.model_name, task=getattr(task, "name", "?"),
        level=problems[0].level if problems else None, num_problems=len(problems), n=n,
        greedy_acc=sum(greedy_ok) / k, maj_acc=sum(maj_ok) / k if sampled else float("nan"),
        pass_at_n=sum(c > 0 for c in right) / k if sampled else float("nan"),
        # token ids where the backend returns them, else its usage count (OpenAI servers)
        mean_tokens=sum(len(r.completions[0].token_ids) or r.usage.completion_tokens
                        for r in g_res) / k,
        flops=sum(r.usage.flops for r in results),
        effort=effort_of(problems[0].prompt) if problems else "low",
        greedy_long_share=(sum(chosen_mode(r.completions[0].text) == "high" for r in g_res) / k
                           if auto else None),
        sampled_long_share=(sum(chosen_mode(c.text) == "high" for r in s_res for c in r.completions)
                            / (k * n) if auto and sampled else None),
        pass_at_k=({j: sum(pass_at_k(n, c, j) for c in right) / k for j in (1, 2, 4, 8, 16, 32, 64, 128)
                    if j <= n} if sampled else None),
    )


def format_table(rows: list[EvalResult]) -> str:
    """A Markdown table of evaluation rows (with the greedy long-mode share when a row has one)."""
    auto = any(r.greedy_long_share is not None for r in rows)
    head = ("| model | task | level | effort | problems | greedy | maj@n | pass@n | n | tokens |"
            + (" greedy in long mode |" if auto else "") + "\n|---|---|---|---|---|---|---|---|---|---|"
            + ("---|" if auto else ""))
    lines = [head] + [
        f"| {r.model} | {r.task} | {r.level} | {r.effort} | {r.num_problems} | {r.greedy_acc:.1%} | "
        f"{r.maj_acc:.1%} | {r.pass_at_n:.1%} | {r.n} | {r.mean_tokens:.0f} |"
        + ((f" {r.greedy_long_share:.0%} |" if r.greedy_long_share is not None else " - |") if auto else "")
        for r in rows]
    return "\n".join(lines)
