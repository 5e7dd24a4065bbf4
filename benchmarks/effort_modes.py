"""Short against long mode: greedy, majority@n, pass@n, tokens and wrong-answer concentration.

For one model, each (task, level) and each effort, one batched engine call gives a greedy answer
and n samples per problem (test split, fixed problems). Besides the accuracies it reports how
concentrated the wrong answers are (the mean size of the largest group of identical wrong
answers among the n samples, over problems that have a wrong sample): voting pays only where
wrong answers scatter. One JSON line per row is appended to --out as it is measured, so an
interrupted run keeps what it measured (rows already there are skipped on a re-run).

    python benchmarks/effort_modes.py --model runs/fam/ttscale-small --num-problems 200 --n 16 \
        --settings arith:2,arith:3,arith:4,countdown:3 --out benchmarks/results/effort_modes.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from ttscale.engine import load_generator
from ttscale.engine.task_stops import with_task_stops
from ttscale.eval.evaluate import majority_answer
from ttscale.tasks import get_task
from ttscale.tasks.effort import apply_effort, max_tokens_for
from ttscale.types import GenerationRequest, SamplingParams


def measure(gen, task, problems, n: int, temperature: float, effort: str, seed: int = 0) -> dict:
    problems = [apply_effort(p, effort) for p in problems]
    limit = max_tokens_for(effort, 160)
    reqs = [GenerationRequest(p.prompt, SamplingParams(n=1, temperature=0.0, max_tokens=limit))
            for p in problems]
    reqs += [GenerationRequest(p.prompt, SamplingParams(n=n, temperature=temperature, seed=seed + i,
                                                        max_tokens=limit))
             for i, p in enumerate(problems) if n > 0]
    t0 = time.time()
    res = with_task_stops(gen, task).generate(reqs)
    wall = time.time() - t0
    k = len(problems)
    greedy = [task.is_correct(p, r.completions[0].text) for p, r in zip(problems, res[:k])]
    maj, cover, conc = [], [], []
    for p, r in zip(problems, res[k:]):
        answers = [task.extract_answer(c.text) for c in r.completions]
        maj.append(task.check(p, majority_answer(task, answers)))
        cover.append(any(task.check(p, a) for a in answers))
        wrong = Counter(task.answer_key(a) for a in answers if not task.check(p, a))
        if wrong:
            conc.append(max(wrong.values()))
    return {"effort": effort, "greedy_acc": sum(greedy) / k,
            "maj_acc": sum(maj) / k if n > 0 else None, "pass_at_n": sum(cover) / k if n > 0 else None,
            "mean_tokens": sum(len(r.completions[0].token_ids) for r in res[:k]) / k,
            "largest_wrong_group": sum(conc) / max(len(conc), 1),
            "flops_greedy_per_problem": sum(r.usage.flops for r in res[:k]) / k,
            "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--num-problems", type=int, default=200)
    ap.add_argument("--n", type=int, default=16, help="samples per problem (0: greedy only)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--settings", default="arith:2,arith:3,arith:4,countdown:3,countdown:4")
    ap.add_argument("--efforts", default="low,high")
    ap.add_argument("--out", default="benchmarks/results/effort_modes.jsonl")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["model"], r["task"], r["level"], r["effort"], r["num_problems"], r["n"],
                      r["temperature"]))
    gen = load_generator(args.model)
    for setting in args.settings.split(","):
        name, level = setting.split(":")
        task = get_task(name)
        problems = task.problems("test", int(level), args.num_problems)
        for effort in args.efforts.split(","):
            key = (args.model, name, int(level), effort, args.num_problems, args.n, args.temperature)
            if key in done:
                continue
            row = {"model": args.model, "task": name, "level": int(level),
                   "num_problems": args.num_problems, "n": args.n, "temperature": args.temperature,
                   **measure(gen, task, problems, args.n, args.temperature, effort)}
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
