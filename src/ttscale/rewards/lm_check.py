"""A language model that checks each step by predicting it: the gap between what a step wrote and
what the checking model would have written.

The long mode's steps are small (one digit operation, one countdown move), small enough for a
model of the family to compute them again. The checker reads prompt + solution once, teacher
forced, and at every solution token compares the logprob of the token written with the logprob
of the token it would have chosen itself (its argmax). Where the checker is sure and disagrees
(a digit it computes differently) the gap is large; where it is unsure (a countdown move, a
choice among several right continuations) the gap stays small, whatever was chosen. So the
signal is a recomputation of each step, not the writer's own surprise, and it works on another
policy's samples as well as on its own.

A step's features are the smallest and the mean gap over its tokens and its mean logprob; a step
score is sigmoid(w . features + b), a logistic head fitted on exact step labels (`fit_head`,
`ttscale train prm --reader lm-check`, on all three or on a chosen subset: `--head-feature`);
with no fitted head it is exp(min gap), the
checker's agreement with the step's least agreeable token. Like the oracle's labels, the score
reported at step k is the probability that the solution is still on a path to the right answer
after it: the smallest step score so far (a step written after an error can look fine, and the
solution is still wrong), so `last` and `min` agree. Verifier FLOPs are one forward pass of the
checker over prompt + solution.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ttscale.errors import TTScaleError
from ttscale.rewards.aggregate import aggregate, check_aggregate
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.rewards.prm import padded_logits, shape_of
from ttscale.tasks.long_countdown import current_notation
from ttscale.types import Completion, Problem, Usage

FEATURES = ("min_gap", "mean_gap", "mean_logprob")


@dataclass
class StepFeatures:
    """Per step of one solution: its features (one row per step, FEATURES order)."""

    rows: list[list[float]]


def step_spans(solution: str, delimiter: str = "\n") -> list[tuple[int, int]]:
    """Character spans [start, end) of the non-empty steps of `solution` (end includes the
    delimiter that closes the step, when there is one)."""
    spans, start = [], 0
    while start < len(solution):
        end = solution.find(delimiter, start)
        stop = len(solution) if end < 0 else end + len(delimiter)
        if solution[start:stop].strip():
            spans.append((start, stop))
        start = stop
    return spans


def token_ranges(spans: Sequence[tuple[int, int]],
                 offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """For each character span (sorted, disjoint), the range [a, z) of the tokens that start in
    it; `offsets` are the tokens' (start, end) characters, in order. One pass over both."""
    out, k = [], 0
    for s0, s1 in spans:
        while k < len(offsets) and offsets[k][0] < s0:
            k += 1
        a = k
        while k < len(offsets) and offsets[k][0] < s1:
            k += 1
        out.append((a, k))
    return out


def features_of(gaps: Sequence[float], logprobs: Sequence[float]) -> list[float]:
    if not gaps:
        return [0.0, 0.0, 0.0]
    return [min(gaps), sum(gaps) / len(gaps), sum(logprobs) / len(logprobs)]


class LMStepChecker:
    """Scores solutions by a causal LM's agreement with each step (see the module docstring).

    `model`: a family model name or a Hugging Face directory with a causal LM and its tokenizer;
    `head`: weights (len(FEATURES)) and bias of a fitted logistic head, or None for exp(min gap).
    """

    name = "prm"

    def __init__(self, model: str, head: dict | None = None, aggregate: str = "last",
                 delimiter: str = "\n", batch_size: int = 32, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ttscale.models.registry import resolve_model

        path = model if Path(model).is_dir() else str(resolve_model(model))
        self.aggregate = check_aggregate(aggregate)
        self.delimiter = delimiter
        self.head = head
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device = torch.device(device)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.lm = lm.to(self.device).eval()
        self.shape = shape_of(self.lm)
        self.max_len = int(self.lm.config.max_position_embeddings)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def _encode(self, prompt: str, solution: str) -> tuple[list[int], int, list[tuple[int, int]]]:
        """ids of prompt + solution, where the solution starts, and each solution token's chars."""
        p = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        enc = self.tokenizer(solution, add_special_tokens=False, return_offsets_mapping=True)
        ids = (p + enc["input_ids"])[: self.max_len]
        return ids, len(p), enc["offset_mapping"]

    def features(self, prompts: Sequence[str],
                 solutions: Sequence[str]) -> tuple[list[StepFeatures], Usage]:
        """Each solution's step features, and the FLOPs of reading them. The checker reads every
        solution in the family's current notation (`tasks.long_countdown.current_notation`: a
        line-for-line rewrite of an older, equivalent one), so a notation is not taken for an
        error."""
        solutions = [current_notation(s) for s in solutions]
        encoded = [self._encode(p, s) for p, s in zip(prompts, solutions)]
        out: list[StepFeatures] = []
        usage = Usage()
        for b in range(0, len(encoded), self.batch_size):
            chunk = encoded[b: b + self.batch_size]
            logits = padded_logits(self.lm, [ids for ids, _, _ in chunk], self.pad_id, self.device)
            logp = torch.log_softmax(logits.float(), -1).cpu()
            top = logp.max(-1).values
            for i, (ids, start, offsets) in enumerate(chunk):
                n = len(ids) - start  # solution tokens that fit
                pos = torch.arange(start - 1, start - 1 + n)
                tok = torch.tensor(ids[start:], dtype=torch.long)  # [] for an empty solution
                lp = logp[i, pos, tok]
                gap = (lp - top[i, pos]).tolist()
                lp = lp.tolist()
                spans = step_spans(solutions[b + i], self.delimiter)
                out.append(StepFeatures([features_of(gap[a:z], lp[a:z])
                                         for a, z in token_ranges(spans, offsets[:n])]))
                flops = self.shape.span_flops(0, len(ids))
                usage = usage + Usage(prompt_tokens=len(ids), flops=flops)
        return out, usage

    def step_scores(self, prompts: Sequence[str],
                    solutions: Sequence[str]) -> tuple[list[list[float]], Usage]:
        """Per-step scores for each (prompt, solution), and the usage of computing them."""
        feats, usage = self.features(prompts, solutions)
        return [list(itertools.accumulate((self.step_score(r) for r in f.rows), min))
                for f in feats], usage

    def step_score(self, row: Sequence[float]) -> float:
        if self.head is None:
            return math.exp(row[0])
        names = self.head.get("features", FEATURES)
        z = sum(w * row[FEATURES.index(f)] for w, f in zip(self.head["weights"], names))
        z += self.head["bias"]
        return 1.0 / (1.0 + math.exp(-z))

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        steps, usage = self.step_scores([problem.prompt] * len(solutions), solutions)
        return ScoreBatch([Scored(aggregate(s, self.aggregate), s) for s in steps], usage)


def check_features(features: Sequence[str]) -> tuple[str, ...]:
    """`features` as a tuple, or a one-line error naming the accepted ones."""
    bad = [f for f in features if f not in FEATURES]
    if bad or not features or len(set(features)) != len(features):
        raise TTScaleError(f"head features {list(features)!r}: accepted, each at most once: "
                           f"{', '.join(FEATURES)}")
    return tuple(features)


def fit_head(rows: Sequence[Sequence[float]], labels: Sequence[float], l2: float = 1e-3,
             iters: int = 200, features: Sequence[str] = FEATURES) -> tuple[dict, float]:
    """A logistic head on step features (rows in FEATURES order; the head reads `features` of
    them): weights and bias minimising the cross-entropy against the step labels
    (L2-regularised; convex, so L-BFGS finds the optimum), and that cross-entropy (without the
    L2 term) at the optimum. On `min_gap` alone the head is a monotone map of the raw score
    exp(min gap) (when its weight is positive): the same ranking, calibrated to probabilities."""
    features = check_features(features)
    if not rows or len(rows) != len(labels):
        raise TTScaleError("the head needs one label per step, and at least one step")
    cols = [FEATURES.index(f) for f in features]
    x = torch.tensor([[r[c] for c in cols] for r in rows], dtype=torch.float64)
    y = torch.tensor(list(labels), dtype=torch.float64)
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x @ w[:-1] + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:-1] + w[-1], y).item()
    return {"features": list(features), "weights": w[:-1].tolist(), "bias": float(w[-1])}, loss
