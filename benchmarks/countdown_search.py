"""Countdown's long mode, an in-context search: how it fails greedily and what sampling gives.

For one model and each level (fixed problems of the test split, or of `--split heldout`): the
short greedy answer (the baseline), the long greedy chain (accuracy, tokens, leaves per trace,
false verdicts per leaf: a branch judged a hit that is not, and whether the trace states an
answer), and `--n` long samples at each `--temperatures` value (accuracy of one sample,
majority vote, the sample the policy's own likelihood ranks first, pass@n, tokens). One JSON
line per (level, temperature) is appended to --out as it is measured.

    python benchmarks/countdown_search.py --model ttscale-small --levels 3,4 --n 8 \
        --temperatures 0.3,0.6 --out benchmarks/results/countdown_search.jsonl
"""
from __future__ import annotations

import argparse
import json

from ttscale.engine import load_generator
from ttscale.engine.task_stops import with_task_stops
from ttscale.rewards.likelihood import mean_logprob
from ttscale.strategies.voting import vote_keys
from ttscale.tasks import get_task
from ttscale.tasks.effort import apply_effort, max_tokens_for
from ttscale.tasks.long_countdown import leaf
from ttscale.types import GenerationRequest, SamplingParams


def greedy_row(gen, task, problems, effort: str) -> dict:
    asked = [apply_effort(p, effort) for p in problems]
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens_for(effort, 96))
    res = gen.generate([GenerationRequest(p.prompt, params) for p in asked])
    right = tokens = n_leaves = false_hits = answered = 0
    for p, r in zip(asked, res):
        c = r.completions[0]
        right += task.is_correct(p, c.text)
        tokens += len(c.token_ids)
        answered += task.extract_answer(c.text) is not None
        for value, _, hit in filter(None, map(leaf, c.text.split("\n"))):
            n_leaves += 1
            false_hits += hit and value != p.meta["target"]
    k = len(problems)
    return {"accuracy": right / k, "mean_tokens": tokens / k, "answered": answered / k,
            "leaves_per_trace": n_leaves / k, "false_hits_per_leaf": false_hits / max(1, n_leaves)}


def sampled_row(gen, task, problems, n: int, temperature: float, seed: int) -> dict:
    asked = [apply_effort(p, "high") for p in problems]
    res = gen.generate([GenerationRequest(p.prompt, SamplingParams(
        n=n, temperature=temperature, max_tokens=max_tokens_for("high", 96), logprobs=True,
        seed=seed + i)) for i, p in enumerate(asked)])
    one = maj = best = any_right = tokens = 0.0
    for p, r in zip(asked, res):
        answers = [task.extract_answer(c.text) for c in r.completions]
        right = [task.check(p, a) for a in answers]
        one += sum(right) / n
        any_right += any(right)
        tokens += sum(len(c.token_ids) for c in r.completions) / n
        lead = vote_keys([task.answer_key(a) for a in answers])  # ties: the earliest answer
        maj += lead is not None and right[lead]
        # the likelihood scorer's ranking (an empty sample ranks last)
        mean_lp = [mean_logprob(c.logprobs or []) for c in r.completions]
        best += right[max(range(n), key=mean_lp.__getitem__)]
    k = len(problems)
    return {"per_sample": one / k, "majority": maj / k, "best_by_likelihood": best / k,
            "pass_at_n": any_right / k, "mean_tokens": tokens / k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--levels", default="3,4")
    ap.add_argument("--num-problems", type=int, default=200)
    ap.add_argument("--split", default="test", help="test or heldout (never trained on)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--temperatures", default="0.3,0.6")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sparse-attention", default=None,
                    help="the torch engine's block-sparse decode attention, e.g. "
                         "block=8,sink=1,window=2,topk=3 (default: dense)")
    ap.add_argument("--out", default="benchmarks/results/countdown_search.jsonl")
    args = ap.parse_args()
    task = get_task("countdown")
    options = {"sparse_attention": args.sparse_attention} if args.sparse_attention else {}
    gen = with_task_stops(load_generator(args.model, **options), task)
    for level in map(int, args.levels.split(",")):
        problems = task.problems(args.split, level, args.num_problems)
        base = {"model": args.model, **options, "split": args.split, "level": level,
                "problems": len(problems),
                "short_greedy": greedy_row(gen, task, problems, "low")["accuracy"],
                "long_greedy": greedy_row(gen, task, problems, "high")}
        for t in map(float, args.temperatures.split(",")):
            row = {**base, "temperature": t, "n": args.n,
                   "long_sampled": sampled_row(gen, task, problems, args.n, t, args.seed)}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
