"""Sequential strategies: self-refinement and budget forcing.

Self-refinement, as built for small step-by-step models that cannot write a critique in words:

* with verifier feedback (a scorer is given), the scorer is the critic: the first step it scores
  below `accept` is the error it points at, and the revision keeps the steps before it and
  re-samples the rest (a scorer without step scores, such as an ORM or a judge, points at no step,
  so the revision starts over). The loop stops as soon as a solution scores at least `accept`;
  the answer is the best-scored attempt (the latest one on ties).
* with the model alone (no scorer, or `feedback="self"`), there is no signal to locate an error,
  so each revision is a fresh attempt and the model's own confidence (mean token logprob) picks
  among its attempts.

Budget forcing (s1, Muennighoff et al. 2025) controls the length of the reasoning: the solution
is generated one step (line) at a time; an answer line (`A:`) before `min_steps` steps is
suppressed and the line is sampled again (the role of s1's appended "Wait", which these models
never saw in training), and once `max_tokens` reasoning tokens are spent the reasoning is cut and
`A: ` is appended to force an answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ttscale.engine.base import Generator
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Candidate, Meter, Solution, register, require
from ttscale.strategies.sampling import (SampleParams, candidate, draw, finish, logprob_needs,
                                         sampling, score_candidates)
from ttscale.tasks.base import ANSWER_PREFIX, Task
from ttscale.types import Completion, Problem

FEEDBACK = ("auto", "verifier", "self")


@dataclass
class SelfRefineParams(SampleParams):
    """Critique-and-revise rounds after a first attempt."""

    rounds: int = 3  # revisions at most, after the first attempt
    feedback: str = "auto"  # verifier (needs a scorer), self (model alone), auto: verifier if any
    accept: float = 0.5  # a solution (step) scoring at least this is taken as right

    def validate(self) -> None:
        super().validate()
        require(self.rounds >= 0, "rounds", self.rounds, ">= 0")
        require(self.feedback in FEEDBACK, "feedback", self.feedback, ", ".join(FEEDBACK))


def first_wrong_prefix(text: str, step_scores: list[float] | None, accept: float) -> str:
    """The text before the first step scored under `accept` ("" when no step is located)."""
    if not step_scores:
        return ""
    bad = next((i for i, s in enumerate(step_scores) if s < accept), len(step_scores) - 1)
    lines = text.split("\n")
    kept: list[str] = []
    seen = 0
    for line in lines:
        if line.strip():
            if seen == bad:
                break
            seen += 1
        kept.append(line)
    return "".join(line + "\n" for line in kept)


def mean_logprob(c: Completion) -> float:
    return sum(c.logprobs) / len(c.logprobs) if c.logprobs else -math.inf


@register("self_refine", SelfRefineParams)
def self_refine(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
                params: SelfRefineParams) -> Solution:
    """First attempt, then up to `rounds` revisions guided by the critic (see module doc)."""
    meter = Meter()
    use_verifier = scorer is not None and params.feedback != "self"
    if params.feedback == "verifier" and scorer is None:
        from ttscale.strategies.base import require_scorer

        require_scorer(scorer, "self_refine with feedback=verifier")
    lp, top = logprob_needs(scorer) if use_verifier else (True, 0)
    cands: list[Candidate] = []
    prefix = ""
    for r in range(params.rounds + 1):
        comp = draw(meter, generator, [problem.prompt + prefix],
                    [sampling(params, call=r, logprobs=lp, top_logprobs=top)])[0][0]
        cand = candidate(task, prefix + comp.text, round=r, kept_prefix_chars=len(prefix))
        cands.append(cand)
        if not use_verifier:
            cand.meta["mean_logprob"] = mean_logprob(comp)
            continue
        score_candidates(meter, scorer, problem, [cand], [comp] if not prefix else None)
        if (cand.score or 0.0) >= params.accept or r == params.rounds:
            break
        prefix = first_wrong_prefix(cand.text, cand.step_scores, params.accept)
    if use_verifier:
        chosen = max(range(len(cands)), key=lambda i: (cands[i].score or 0.0, i))
    else:
        chosen = max(range(len(cands)), key=lambda i: (cands[i].meta["mean_logprob"], -i))
    return finish(meter, "self_refine", params, cands, chosen,
                  feedback_used="verifier" if use_verifier else "self")


@dataclass
class BudgetForcingParams(SampleParams):
    """s1-style control of reasoning length, counted in steps and tokens."""

    temperature: float = 0.0  # s1 decodes greedily
    min_steps: int = 2  # reasoning steps required before an answer line is allowed
    max_tokens: int = 256  # reasoning tokens at most; then "A: " is forced
    max_waits: int = 4  # re-samples of early answer lines in all, then an answer is accepted
    wait_temperature: float = 1.0  # temperature of those re-samples (greedy would repeat itself)
    answer_tokens: int = 32  # tokens allowed for the forced answer line

    def validate(self) -> None:
        super().validate()
        require(self.min_steps >= 0, "min_steps", self.min_steps, ">= 0")
        require(self.max_waits >= 0, "max_waits", self.max_waits, ">= 0")
        require(self.wait_temperature > 0, "wait_temperature", self.wait_temperature, "> 0")
        require(self.answer_tokens >= 1, "answer_tokens", self.answer_tokens, ">= 1")


@register("budget_forcing", BudgetForcingParams)
def budget_forcing(problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
                   params: BudgetForcingParams) -> Solution:
    """One chain, generated step by step between a minimum and a maximum reasoning length."""
    meter = Meter()
    delim = task.step_delimiter
    text, used, steps, waits, call = "", 0, 0, 0, 0
    answered = resample = False
    while used < params.max_tokens:
        temp = params.wait_temperature if resample else None
        comp = draw(meter, generator, [problem.prompt + text],
                    [sampling(params, call=call, stop=[delim], temperature=temp,
                              max_tokens=params.max_tokens - used)])[0][0]
        call += 1
        used = meter.cost.policy_completion_tokens  # every token generated, discarded or not
        line = comp.text.rstrip(delim)
        if line.lstrip().startswith("A:"):
            if steps < params.min_steps and waits < params.max_waits:
                waits += 1  # suppress the early answer: sample this line again
                resample = True
                continue
            text += line + delim
            answered = True
            break
        if comp.finish_reason == "length":
            text += line
            break
        if not line.strip():
            break  # end of sequence (or an empty line) without an answer
        text += line + delim
        steps += 1
        resample = False
    forced = not answered
    if forced:
        if text and not text.endswith(delim):
            text += delim
        comp = draw(meter, generator, [problem.prompt + text + ANSWER_PREFIX],
                    [sampling(params, call=call, stop=[delim],
                              max_tokens=params.answer_tokens)])[0][0]
        text += ANSWER_PREFIX + comp.text.rstrip(delim) + delim
    cand = candidate(task, text, steps=steps, waits=waits, reasoning_tokens=used, forced=forced)
    return finish(meter, "budget_forcing", params, [cand], 0)
