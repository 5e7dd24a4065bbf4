"""An LLM judge: any Generator (typically a large model behind the OpenAI-compatible backend)
reads a problem and a proposed solution and gives a verdict.

The verdict is parsed from the judge's text: a score `0`-`10` (scaled to [0, 1]) or a `yes` /
`no` (1 / 0), whichever comes first; an unparseable verdict scores `unparsed` (0.0 by default).
Everything the judge computes is counted as verifier cost.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.types import Completion, GenerationRequest, Problem, SamplingParams, Usage

TEMPLATE = (
    "You are checking a solution to a problem.\n\n"
    "Problem:\n{question}\n\n"
    "Proposed solution:\n{solution}\n\n"
    "Is the final answer correct? Reply with a score from 0 (certainly wrong) to 10 "
    "(certainly right), or with yes or no.\n"
    "Verdict:"
)
_VERDICT = re.compile(r"\b(10|[0-9])(?:\s*/\s*10)?\b|\b(yes|no|correct|incorrect)\b", re.I)


def parse_verdict(text: str) -> float | None:
    """The judge's verdict in [0, 1], or None when the text holds none."""
    m = _VERDICT.search(text)
    if m is None:
        return None
    if m.group(1) is not None:
        return int(m.group(1)) / 10.0
    return 1.0 if m.group(2).lower() in ("yes", "correct") else 0.0


class JudgeScorer:
    """Asks `generator` for a verdict on each solution; greedy, `max_tokens` short."""

    name = "judge"

    def __init__(self, generator: Generator, template: str = TEMPLATE, max_tokens: int = 16,
                 unparsed: float = 0.0) -> None:
        if "{solution}" not in template:
            raise TTScaleError("judge template must contain {solution} (and may contain "
                               "{question} and {prompt})")
        self.generator = generator
        self.template = template
        self.max_tokens = max_tokens
        self.unparsed = unparsed

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        params = SamplingParams(n=1, temperature=0.0, max_tokens=self.max_tokens, stop=["\n"])
        requests = [GenerationRequest(self.template.format(question=problem.question,
                                                           prompt=problem.prompt, solution=s),
                                      params) for s in solutions]
        results = self.generator.generate(requests) if requests else []
        usage = Usage()
        scores = []
        for r in results:
            usage = usage + r.usage
            if r.error is not None:
                raise TTScaleError(f"judge generation failed: {r.error}")
            verdict = parse_verdict(r.completions[0].text) if r.completions else None
            scores.append(Scored(self.unparsed if verdict is None else verdict))
        return ScoreBatch(scores, usage)
