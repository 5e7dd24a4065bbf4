"""Issue 13's headline: the best deployable configuration within 16x short greedy's FLOPs.

For one model and each (task, level): a greedy answer and n samples per problem, in the short
and in the long mode, on held-out problems (to choose on) and on test problems (to score on),
with the policy's logprobs. Configurations read from those samples (sample once, select many):
greedy at each effort, and majority / best-of-k / weighted majority over k of the n samples
(k = 2 ... n, averaged over `--replicates` random subsets of k), scored by the policy's
likelihood (deployable, no extra FLOPs) and, for countdown, by the answer checker (reported
apart). A configuration's FLOPs: its share of the samples' policy FLOPs (k/n of the request),
plus, for a learned verifier (`--scorer-model`), its share of the FLOPs of scoring them.

The configuration is chosen on the held-out problems (highest accuracy within `--max-ratio` x
short greedy's FLOPs there) and reported on the test problems: no selection on scored data.
With several temperatures (`--temperature 0.3,0.6`) the temperature is part of the
configuration (`...@T=0.3`) and is chosen the same way.
Samples are stored under --samples-dir and reused on a re-run; one JSON line per (task, level)
is appended to --out.

    python benchmarks/effort_budget.py --model runs/fam/ttscale-small --settings arith:3,countdown:3
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ttscale.engine import load_generator
from ttscale.engine.task_stops import with_task_stops
from ttscale.eval.verifier_quality import (ProblemSamples, draw_samples, load_samples, save_samples,
                                           score_stored)
from ttscale.rewards import get_scorer
from ttscale.strategies.base import Candidate
from ttscale.strategies.parallel import best_index
from ttscale.strategies.voting import vote
from ttscale.tasks import get_task
from ttscale.tasks.effort import apply_effort, max_tokens_for

RULES = ("majority", "best_of_n", "weighted_majority")


def samples(gen, task, level: int, split: str, num: int, n: int, effort: str, temperature: float,
            path: Path) -> list[ProblemSamples]:
    if path.exists():
        return load_samples(path)
    problems = [apply_effort(p, effort) for p in task.problems(split, level, num)]
    data = draw_samples(with_task_stops(gen, task), problems, n=n, temperature=temperature,
                        max_tokens=max_tokens_for(effort, 160), seed=level)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_samples(path, data)
    return data


def configurations(task, data: dict[str, list[ProblemSamples]], scorers: dict, ks: list[int],
                   replicates: int) -> dict[str, dict]:
    """Accuracy and mean FLOPs of every configuration on one set of problems."""
    out = {}
    for effort, rows in data.items():
        m = len(rows)
        out[f"greedy({effort})"] = {
            "accuracy": sum(task.is_correct(d.problem, d.greedy) for d in rows) / m,
            "flops": sum(d.greedy_flops for d in rows) / m, "scorer": None}
        batches = {name: [score_stored(sc, d, d.samples, d.completions(greedy=False)) for d in rows]
                   for name, sc in scorers.items()}
        scores = {name: [[s.value for s in b.scores] for b in bs] for name, bs in batches.items()}
        # a learned verifier's FLOPs count: its share of scoring all n samples, k/n of them
        verifier = {name: sum(b.usage.flops for b in bs) / m for name, bs in batches.items()}
        for k in ks:
            subsets = [[random.Random(r * 7919 + i).sample(range(len(d.samples)), k) for i, d in enumerate(rows)]
                       for r in range(replicates)]
            sampled = sum(d.samples_flops * k / len(d.samples) for d in rows) / m
            for rule in RULES:
                for name in (["-"] if rule == "majority" else list(scorers)):
                    flops = sampled + (0.0 if rule == "majority" else verifier[name] * k / len(rows[0].samples))
                    right = 0
                    for sub in subsets:
                        for i, d in enumerate(rows):
                            cands = [Candidate(d.samples[j], task.extract_answer(d.samples[j]),
                                               None if rule == "majority" else scores[name][i][j])
                                     for j in sub[i]]
                            if rule == "majority":
                                c = vote(task, cands)
                            elif rule == "best_of_n":
                                c = best_index(cands)
                            else:
                                c = vote(task, cands, [x.score for x in cands])
                            right += c is not None and task.check(d.problem, cands[c].answer)
                    key = f"{rule}(n={k},{effort})" + ("" if rule == "majority" else f"[{name}]")
                    out[key] = {"accuracy": right / (m * replicates), "flops": flops,
                                "scorer": None if rule == "majority" else name}
    return out


def choose(configs: dict[str, dict], limit: float, allowed) -> str:
    """The most accurate configuration within `limit` FLOPs (ties: the cheaper)."""
    ok = [(v["accuracy"], -v["flops"], k) for k, v in configs.items()
          if v["flops"] <= limit and allowed(v["scorer"])]
    return max(ok)[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--settings", default="arith:3,arith:4,arith:5,countdown:3,countdown:4")
    ap.add_argument("--num-problems", type=int, default=200, help="test problems per setting")
    ap.add_argument("--heldout-problems", type=int, default=100, help="problems to choose on")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--temperature", default="1.0",
                    help="sampling temperature, or several (comma-separated) to choose among")
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--max-ratio", type=float, default=16.0)
    ap.add_argument("--scorer-model", default=None, help="a PRM/ORM to judge beside the likelihood")
    ap.add_argument("--samples-dir", default="runs/effort-budget")
    ap.add_argument("--out", default="benchmarks/results/effort_budget.jsonl")
    args = ap.parse_args()
    gen = load_generator(args.model)
    ks = [k for k in (2, 4, 8, 16, 32, 64) if k <= args.n]
    tag = Path(args.model).name
    for setting in args.settings.split(","):
        name, level = setting.split(":")
        task = get_task(name)
        scorers = {"likelihood": get_scorer("likelihood")}
        if task.answer_checkable:
            scorers["checker"] = get_scorer("checker", task=task)
        if args.scorer_model:
            scorers[Path(args.scorer_model).name] = get_scorer("prm", model=args.scorer_model)
        temps = [float(t) for t in args.temperature.split(",")]
        sets = {}
        for split, num in (("heldout", args.heldout_problems), ("test", args.num_problems)):
            sets[split] = {}
            for t in temps:
                stem = Path(args.samples_dir) / f"{tag}-{name}-L{level}-{split}"
                data = {e: samples(gen, task, int(level), split, num, args.n, e, t,
                                   Path(f"{stem}-{e}-n{args.n}-t{t}.jsonl"))
                        for e in ("low", "high")}
                for key, conf in configurations(task, data, scorers, ks, args.replicates).items():
                    if key.startswith("greedy("):  # the same answers at every temperature
                        sets[split].setdefault(key, conf)
                    else:
                        sets[split][f"{key}@T={t}" if len(temps) > 1 else key] = conf
        held, test = sets["heldout"], sets["test"]
        row = {"model": args.model, "task": name, "level": int(level), "test_problems": args.num_problems,
               "heldout_problems": args.heldout_problems, "n": args.n,
               "temperature": temps if len(temps) > 1 else temps[0],
               "max_ratio": args.max_ratio, "greedy_low": test["greedy(low)"]}
        for label, allowed in (("learned", lambda s: s != "checker"), ("checker", lambda s: True)):
            if label == "checker" and "checker" not in scorers:
                continue
            pick = choose(held, args.max_ratio * held["greedy(low)"]["flops"], allowed)
            t = test[pick]
            row[f"best_{label}"] = {"config": pick, "accuracy": t["accuracy"],
                                    "flops_ratio": t["flops"] / test["greedy(low)"]["flops"],
                                    "gain": t["accuracy"] - test["greedy(low)"]["accuracy"]}
        row["test_table"] = test
        print(json.dumps({k: v for k, v in row.items() if k != "test_table"}), flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
