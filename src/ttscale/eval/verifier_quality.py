"""A verifier judged where it matters: on samples of the same problem (`ttscale verifier-quality`).

For each problem the policy answers greedily once and samples `n` solutions; the verifier scores
all of them. The primary figure is the within-problem AUROC (`rewards.quality`): over problems
with both right and wrong samples, how often a right sample outscores a wrong one of the same
problem; per step type too (the first step; the step where the first error happens). Beside it:
best-of-n with the verifier against greedy, majority and weighted majority, and the pooled
figures (pooled AUROC, ProcessBench F1) that a verifier reading only difficulty can inflate.
`cascade_rows` / `cascade_summary` evaluate the cascade strategy on the same stored samples.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError, unknown
from ttscale.rewards.base import Scorer
from ttscale.rewards.quality import first_wrong, pooled_auroc, step_groups, within_problem_auroc
from ttscale.tasks.base import Task
from ttscale.types import Completion, GenerationRequest, Problem, SamplingParams


@dataclass
class ProblemSamples:
    """One problem's greedy answer and `n` samples, with the policy FLOPs of each."""

    problem: Problem
    greedy: str
    samples: list[str]
    greedy_flops: float
    samples_flops: float
    greedy_logprobs: list[float] | None = None  # the policy's logprob of each token
    samples_logprobs: list[list[float]] | None = None  # (for scorers that read them: likelihood)

    def completions(self, first: int = 0, k: int | None = None, greedy: bool = True) -> list[Completion] | None:
        """The greedy chain (if `greedy`) and samples first..first+k as Completions with logprobs,
        or None when they were not stored."""
        if self.greedy_logprobs is None or self.samples_logprobs is None:
            return None
        end = len(self.samples) if k is None else first + k
        texts = ([self.greedy] if greedy else []) + self.samples[first:end]
        lps = ([self.greedy_logprobs] if greedy else []) + self.samples_logprobs[first:end]
        return [Completion(t, [0] * len(lp), "stop", logprobs=lp) for t, lp in zip(texts, lps)]


def score_stored(scorer: Scorer, d: ProblemSamples, texts: list[str], comps: list[Completion] | None):
    """`scorer` on stored texts, with their completions when the scorer reads logprobs."""
    if getattr(scorer, "needs_logprobs", False):
        if comps is None:
            raise TTScaleError(f"scorer {scorer.name!r} reads the policy's logprobs, and these stored "
                               "samples have none; accepted: samples drawn again (they store logprobs)")
        return scorer.score(d.problem, texts, comps)
    return scorer.score(d.problem, texts)


def draw_samples(generator: Generator, problems: Sequence[Problem], n: int = 16,
                 temperature: float = 1.0, max_tokens: int = 128, seed: int = 0) -> list[ProblemSamples]:
    """A greedy answer and `n` samples per problem, in one generator call."""
    reqs = []
    for i, p in enumerate(problems):
        reqs.append(GenerationRequest(p.prompt, SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens,
                                                               logprobs=True)))
        reqs.append(GenerationRequest(p.prompt, SamplingParams(n=n, temperature=temperature,
                                                               max_tokens=max_tokens, seed=seed * 100_003 + i,
                                                               logprobs=True)))
    res = generator.generate(reqs)
    out = []
    for i, p in enumerate(problems):
        g, s = res[2 * i], res[2 * i + 1]
        if g.error or s.error:
            raise RuntimeError(f"generation failed for {p.id}: {g.error or s.error}")
        out.append(ProblemSamples(p, g.completions[0].text, [c.text for c in s.completions],
                                  g.usage.flops, s.usage.flops, g.completions[0].logprobs,
                                  [c.logprobs for c in s.completions]))
    return out


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _vote(task: Task, answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    table: dict[str, float] = {}
    first: dict[str, str | None] = {}
    for a, w in zip(answers, weights):
        key = task.answer_key(a)
        if key is not None:
            table[key] = table.get(key, 0.0) + w
            first.setdefault(key, a)
    if not table:
        return None
    return first[max(table, key=lambda k: table[k])]  # dicts keep order: earliest wins ties


def _processbench(pred: Sequence[int], gold: Sequence[int]) -> float:
    err = [p == g for p, g in zip(pred, gold) if g != -1]
    cor = [p == -1 for p, g in zip(pred, gold) if g == -1]
    if not err or not cor:
        return math.nan
    a, b = sum(err) / len(err), sum(cor) / len(cor)
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def verifier_quality(task: Task, data: Sequence[ProblemSamples], scorer: Scorer,
                     threshold: float = 0.5) -> dict[str, Any]:
    """Within-problem AUROC (answers and steps), selection accuracy and pooled figures."""
    groups, first_groups, error_groups = [], [], []
    all_scores: list[float] = []
    all_right: list[bool] = []
    pred_first, gold_first = [], []
    greedy = bon = maj = wmaj = passn = 0
    verifier_flops = 0.0
    oracle = task.has_step_oracle
    for d in data:
        p = d.problem
        batch = score_stored(scorer, d, [d.greedy, *d.samples], d.completions())
        verifier_flops += batch.usage.flops
        scores = [s.value for s in batch.scores[1:]]
        answers = [task.extract_answer(t) for t in d.samples]
        right = [task.check(p, a) for a in answers]
        greedy += task.is_correct(p, d.greedy)
        bon += right[_argmax(scores)] if scores else 0
        maj += task.check(p, _vote(task, answers, [1.0] * len(answers)))
        wmaj += task.check(p, _vote(task, answers, scores))
        passn += any(right)
        groups.append((scores, right))
        all_scores += scores
        all_right += right
        steps = [s.steps for s in batch.scores[1:]]
        if oracle and all(steps):
            verdicts = [task.check_steps(p, task.split_steps(t)) for t in d.samples]
            first_groups += step_groups(steps, verdicts, "first")
            error_groups += step_groups(steps, verdicts, "first_error")
            for s, v in zip(steps, verdicts):
                k = min(len(s), len(v))
                pred_first.append(first_wrong([x >= threshold for x in s[:k]]))
                gold_first.append(first_wrong(v[:k]))
    k = max(len(data), 1)
    n = len(data[0].samples) if data else 0
    greedy_flops = sum(d.greedy_flops for d in data) / k
    return {
        "task": task.name, "problems": len(data), "n": n,
        "within_problem_auroc": within_problem_auroc(groups).to_dict(),
        "step_auroc_first_step": within_problem_auroc(first_groups).to_dict(),
        "step_auroc_first_error": within_problem_auroc(error_groups).to_dict(),
        "greedy_acc": greedy / k, "best_of_n_acc": bon / k, "maj_acc": maj / k,
        "weighted_maj_acc": wmaj / k, "pass_at_n": passn / k,
        "pooled_auroc": pooled_auroc(all_scores, all_right).auroc,
        "processbench_f1": _processbench(pred_first, gold_first),
        "greedy_flops": greedy_flops,
        "best_of_n_flops": (sum(d.samples_flops for d in data) + verifier_flops) / k,
    }


def save_samples(path: str | Path, data: Sequence[ProblemSamples]) -> None:
    """Write drawn samples as JSONL, so other verifiers can be judged on the very same samples."""
    with Path(path).open("w", encoding="utf-8") as f:
        for d in data:
            f.write(json.dumps({"problem": asdict(d.problem), "greedy": d.greedy, "samples": d.samples,
                                "greedy_flops": d.greedy_flops, "samples_flops": d.samples_flops,
                                "greedy_logprobs": d.greedy_logprobs,
                                "samples_logprobs": d.samples_logprobs}) + "\n")


def load_samples(path: str | Path) -> list[ProblemSamples]:
    """Samples written by `save_samples`."""
    if not Path(path).is_file():
        raise TTScaleError(f"samples file {str(path)!r} does not exist; accepted: a file written "
                           "by `ttscale verifier-quality --samples-out`")
    out = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        out.append(ProblemSamples(Problem(**r["problem"]), r["greedy"], r["samples"],
                                  r["greedy_flops"], r["samples_flops"], r.get("greedy_logprobs"),
                                  r.get("samples_logprobs")))
    return out


def parse_scorer_spec(spec: str) -> tuple[str, str]:
    """`prm` or `prm:min` -> (scorer, aggregate); the aggregate defaults to `last`."""
    name, _, how = spec.partition(":")
    return name, how or "last"


def measure_verifiers(model: str, scorers: Sequence[str], task: str, level: int,
                      num_problems: int = 200, n: int = 16, temperature: float = 1.0,
                      max_tokens: int = 128, scorer_model: str | None = None, split: str = "test",
                      seed: int = 0, effort: str = "low", samples_in: str | Path | None = None,
                      samples_out: str | Path | None = None) -> list[dict[str, Any]]:
    """`verifier_quality` of each scorer (`name` or `name:aggregate`) on the same samples: drawn
    from `model` for `num_problems` problems of one task and level, or read from `samples_in`."""
    from ttscale.engine import load_generator
    from ttscale.eval.solve import load_problems
    from ttscale.rewards import SCORERS, get_scorer
    from ttscale.rewards.aggregate import check_aggregate
    from ttscale.tasks import get_task
    from ttscale.tasks.effort import apply_effort, check_effort

    check_effort(effort)
    for spec in scorers:
        name, how = parse_scorer_spec(spec)
        if name not in SCORERS or name in ("self-certainty", "judge"):  # they need top-k logprobs, a model
            raise unknown("scorer for verifier-quality", name, [s for s in SCORERS
                                                              if s not in ("self-certainty", "judge")])
        check_aggregate(how)
    task_obj = get_task(task)
    if samples_in is not None:
        data = load_samples(samples_in)
    else:
        problems = [apply_effort(p, effort) for p in load_problems(task_obj, level, num_problems, split)]
        data = draw_samples(load_generator(model), problems, n=n, temperature=temperature,
                            max_tokens=max_tokens, seed=seed)
    if samples_out is not None:
        save_samples(samples_out, data)
    out = []
    for spec in scorers:
        name, how = parse_scorer_spec(spec)
        scorer = get_scorer(name, task=task_obj, model=scorer_model, aggregate=how)
        out.append({"model": model, "scorer": name, "aggregate": how,
                    "scorer_model": getattr(scorer, "path", None), "level": level, "split": split,
                    "temperature": temperature, "effort": effort,
                    **verifier_quality(task_obj, data, scorer)})
    return out


# -- the cascade, selected from stored samples ---------------------------------------------------
@dataclass
class CascadeRow:
    """One problem as the cascade sees it: the greedy answer's score, and what each choice yields."""

    greedy_score: float
    greedy_right: bool
    escalated_right: bool
    greedy_flops: float  # the greedy chain and its check
    escalation_flops: float  # the extra samples (and their scores when the escalation uses them)


def cascade_rows(task: Task, data: Sequence[ProblemSamples], scorer: Scorer, n: int,
                 escalate: str = "majority") -> list[CascadeRow]:
    """Per problem, the cascade's two outcomes from stored samples (sample once, select many):
    greedy, or `escalate` over the greedy chain and the first `n` samples. Escalation FLOPs are
    n/N of the stored samples' policy FLOPs, plus their scoring when `escalate` reads scores."""
    from ttscale.strategies.base import Candidate
    from ttscale.strategies.cascade import ESCALATIONS
    from ttscale.strategies.parallel import best_index
    from ttscale.strategies.voting import vote

    if escalate not in ESCALATIONS or escalate == "high":
        raise unknown("escalation from stored samples", escalate, ESCALATIONS[:-1])
    rows = []
    for d in data:
        p = d.problem
        k = min(n, len(d.samples))
        g = score_stored(scorer, d, [d.greedy], d.completions(0, 0))
        rest = score_stored(scorer, d, d.samples[:k], d.completions(0, k, greedy=False)) \
            if escalate != "majority" else None
        cands = [Candidate(d.greedy, task.extract_answer(d.greedy), g.scores[0].value)]
        cands += [Candidate(t, task.extract_answer(t), rest.scores[i].value if rest else None)
                  for i, t in enumerate(d.samples[:k])]
        if escalate == "majority":
            i = vote(task, cands)
        elif escalate == "best_of_n":
            i = best_index(cands)
        else:
            i = vote(task, cands, [c.score or 0.0 for c in cands])
        answer = cands[i].answer if i is not None else None
        extra = d.samples_flops * k / max(len(d.samples), 1) + (rest.usage.flops if rest else 0.0)
        rows.append(CascadeRow(g.scores[0].value, task.check(p, cands[0].answer), task.check(p, answer),
                               d.greedy_flops + g.usage.flops, extra))
    return rows


def cascade_summary(rows: Sequence[CascadeRow], threshold: float) -> dict[str, float]:
    """Accuracy and mean FLOPs of the cascade at `threshold` (escalate when score < threshold)."""
    k = max(len(rows), 1)
    esc = [r.greedy_score < threshold for r in rows]
    return {"threshold": threshold, "problems": len(rows),
            "accuracy": sum(r.escalated_right if e else r.greedy_right for r, e in zip(rows, esc)) / k,
            "greedy_acc": sum(r.greedy_right for r in rows) / k,
            "escalation_rate": sum(esc) / k,
            "mean_flops": sum(r.greedy_flops + (r.escalation_flops if e else 0.0) for r, e in zip(rows, esc)) / k,
            "greedy_flops": sum(r.greedy_flops for r in rows) / k}
