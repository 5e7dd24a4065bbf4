"""Step-by-step expansion and scoring, shared by the tree searches.

A step is one line: it is generated with `stop=[delimiter]` (the returned text excludes the
delimiter). A step that states the final answer (`A: ...`) ends the solution, and so do a step
that hit its token limit, an empty step (the model ended), the maximum depth and a context that
has no room for one more step. Every expansion of a search step is ONE generator call and every
evaluation ONE scorer call, both through the Meter, so the Cost adds up exactly.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ttscale.engine.base import Generator
from ttscale.errors import out_of_range, unknown
from ttscale.rewards.base import Scorer
from ttscale.strategies.base import Candidate, Meter, Solution
from ttscale.strategies.tree import Node, Tree
from ttscale.tasks.base import Task
from ttscale.types import Completion, GenerationRequest, Problem, SamplingParams

SELECT_RULES = ("best", "weighted")


@dataclass
class StepSettings:
    """How steps are sampled, common to every tree search."""

    temperature: float = 0.8
    top_p: float = 1.0
    step_max_tokens: int = 48  # longest step; a longer one ends its branch ("length")
    max_depth: int = 12  # most steps in a solution
    seed: int | None = 0  # requests get seeds derived from it; None samples without seeds


def check_step_settings(p: StepSettings) -> None:
    if not 0 <= p.temperature <= 5:
        raise out_of_range("temperature", p.temperature, "0 <= temperature <= 5")
    if not 0 < p.top_p <= 1:
        raise out_of_range("top_p", p.top_p, "0 < top_p <= 1")
    if p.step_max_tokens < 1:
        raise out_of_range("step_max_tokens", p.step_max_tokens, "an integer >= 1")
    if p.max_depth < 1:
        raise out_of_range("max_depth", p.max_depth, "an integer >= 1")


def check_select(select: str) -> None:
    if select not in SELECT_RULES:
        raise unknown("select rule", select, SELECT_RULES)


def positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise out_of_range(name, value, "an integer >= 1")


class StepSearch:
    """One search over one problem: the tree, the meter and the expand/evaluate operations."""

    def __init__(self, problem: Problem, task: Task, generator: Generator, scorer: Scorer | None,
                 settings: StepSettings, strategy: str) -> None:
        self.problem, self.task, self.generator, self.scorer = problem, task, generator, scorer
        self.s = settings
        self.meter = Meter()
        self.tree = Tree(problem.prompt, task.step_delimiter, strategy)
        self.tree.meta["question"] = problem.question
        self._calls = 0

    # -- generation ----------------------------------------------------------------------
    def _params(self, n: int, index: int, temperature: float | None = None) -> SamplingParams:
        seed = None if self.s.seed is None else self.s.seed * 1_000_003 + self._calls * 10_007 + index
        return SamplingParams(n=n, temperature=self.s.temperature if temperature is None else temperature,
                              top_p=self.s.top_p, max_tokens=self.s.step_max_tokens,
                              stop=[self.task.step_delimiter], seed=seed, logprobs=True)

    def sample_steps(self, prefixes: Sequence[str], counts: Sequence[int],
                     temperature: float | None = None) -> list[list[Completion]]:
        """`counts[i]` next steps after each partial solution `prefixes[i]`, in one generator call."""
        reqs = [GenerationRequest(self.problem.prompt + p, self._params(c, i, temperature))
                for i, (p, c) in enumerate(zip(prefixes, counts)) if c > 0]
        self._calls += 1
        results = self.meter.generate(self.generator, reqs) if reqs else []
        out: list[list[Completion]] = []
        it = iter(results)
        for c in counts:
            if c <= 0:
                out.append([])
                continue
            r = next(it)
            if r.error:
                self.tree.meta.setdefault("errors", []).append(r.error)
            out.append([] if r.error else list(r.completions))
        return out

    def expand(self, parents: Sequence[Node], counts: Sequence[int],
               temperature: float | None = None) -> list[list[Node]]:
        """Add `counts[i]` sampled children under each `parents[i]` (one generator call)."""
        samples = self.sample_steps([self.tree.text(p) for p in parents], counts, temperature)
        children: list[list[Node]] = []
        for parent, comps in zip(parents, samples):
            kids = []
            for c in comps:
                node = self.tree.add(parent, c.text.rstrip("\r"), prior=step_probability(c))
                node.terminal, node.reason = self._ending(node, c)
                kids.append(node)
            children.append(kids)
        return children

    def _ending(self, node: Node, c: Completion) -> tuple[bool, str]:
        text = node.text.strip()
        if text.startswith("A:"):
            return True, "answer"
        if c.finish_reason == "length":
            return True, "length"
        if not text:
            return True, "eos"
        if node.depth >= self.s.max_depth:
            return True, "max_depth"
        used = len(self.generator.tokenize(self.problem.prompt + self.tree.text(node)))
        if used + self.s.step_max_tokens >= self.generator.context_length:
            return True, "context"
        return False, ""

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, nodes: Sequence[Node], texts: Sequence[str] | None = None) -> list[float]:
        """Score the partial solutions at `nodes` (or `texts` in their place) in one scorer call.

        A node's value is its last step's score, or for a finished solution the scorer's
        aggregate over all steps. Without a scorer every node is worth 0.
        """
        if not nodes:
            return []
        texts = list(texts) if texts is not None else [self.tree.text(n) for n in nodes]
        if self.scorer is None:
            values = [0.0] * len(nodes)
        else:
            batch = self.meter.score(self.scorer, self.problem, texts)
            values = []
            for node, scored in zip(nodes, batch.scores):
                node.meta["step_scores"] = [float(x) for x in scored.steps]
                last = scored.steps[-1] if scored.steps and not node.terminal else scored.value
                values.append(float(last))
        for node, v in zip(nodes, values):
            node.score = v
        return values

    def lookahead(self, nodes: Sequence[Node], k: int) -> list[str]:
        """Each node's partial solution extended by up to `k` greedy steps (for scoring only)."""
        texts = [self.tree.text(n) for n in nodes]
        open_ = [not n.terminal for n in nodes]
        for _ in range(k):
            idx = [i for i, o in enumerate(open_) if o]
            if not idx:
                break
            samples = self.sample_steps([texts[i] for i in idx], [1] * len(idx), temperature=0.0)
            for i, comps in zip(idx, samples):
                if not comps:
                    open_[i] = False
                    continue
                c = comps[0]
                texts[i] += c.text + self.task.step_delimiter
                step = c.text.strip()
                if step.startswith("A:") or not step or c.finish_reason == "length":
                    open_[i] = False
                elif len(self.generator.tokenize(self.problem.prompt + texts[i])) + self.s.step_max_tokens \
                        >= self.generator.context_length:
                    open_[i] = False
        return texts

    # -- results -------------------------------------------------------------------------
    def candidate(self, node: Node) -> Candidate:
        text = self.tree.text(node)
        return Candidate(text=text, answer=self.task.extract_answer(text), score=node.score,
                         step_scores=node.meta.get("step_scores"),
                         meta={"node": node.id, "reason": node.reason, "depth": node.depth})

    def pick(self, nodes: Sequence[Node], select: str) -> Node | None:
        """The finished node to answer with: best value, or weighted vote over answers."""
        if not nodes:
            return None
        best = max(nodes, key=lambda n: (n.score if n.score is not None else -math.inf, -n.id))
        if select == "best":
            return best
        totals: dict[str, float] = defaultdict(float)
        for n in nodes:
            key = self.task.answer_key(self.task.extract_answer(self.tree.text(n)))
            if key is not None:
                totals[key] += n.score or 0.0
        if not totals:
            return best
        top = max(totals, key=lambda a: (totals[a], a))
        same = [n for n in nodes
                if self.task.answer_key(self.task.extract_answer(self.tree.text(n))) == top]
        return max(same, key=lambda n: (n.score if n.score is not None else -math.inf, -n.id))


def step_probability(c: Completion) -> float:
    """exp(mean token logprob) of a step: the policy's per-token confidence in it."""
    if not c.logprobs:
        return 1.0
    return math.exp(sum(c.logprobs) / len(c.logprobs))


def finish(search: StepSearch, chosen: Node | None, finished: Sequence[Node], params: object) -> Solution:
    """The Solution of a search: the chosen path, every finished node as a candidate, the tree."""
    if chosen is not None:
        search.tree.choose(chosen)
    text = search.tree.text(chosen) if chosen is not None else ""
    cost = search.meter.finish()
    return Solution(answer=search.task.extract_answer(text) if chosen is not None else None,
                    text=text, candidates=[search.candidate(n) for n in finished], cost=cost,
                    strategy=search.tree.strategy, params=asdict(params), tree=search.tree.to_dict())
