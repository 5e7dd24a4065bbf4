"""Strategies at equal FLOPs: accuracy of each test-time strategy at about the same mean compute.

Runs `ttscale solve` (through its Python API, `run_solve`) for each (task, level, strategy) row and
appends one JSON line per row to benchmarks/results/strategies_equal_flops.jsonl, then prints the
markdown table of docs/results.md. Each row records the exact `ttscale solve` command that
reproduces it.

The budget is set by best-of-8 with the learned PRM (8 samples plus the PRM's pass over them);
the other strategies' settings were picked on a few held-out problems to land near that mean
FLOPs (policy plus verifier). The oracle rows use the same settings with the exact checker as
scorer (which costs no FLOPs): they show what a perfect verifier would get from the same samples.

    python benchmarks/strategies_equal_flops.py [--num-problems 50] [--model ttscale-small]
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from pathlib import Path

ROWS = [  # (label, strategy, params, scorer)
    ("greedy", "greedy", {}, None),
    ("majority (N=20)", "majority", {"n": 20}, None),
    ("best-of-8, PRM", "best_of_n", {"n": 8}, "prm"),
    ("weighted majority (N=8), PRM", "weighted_majority", {"n": 8}, "prm"),
    ("beam search (N=4, M=2), PRM", "beam_search", {"n": 4, "width": 2}, "prm"),
    ("MCTS (8 iterations, width 2), PRM", "mcts", {"iterations": 8, "width": 2}, "prm"),
    ("REBASE (N=4), PRM", "rebase", {"n": 4}, "prm"),
    ("best-of-8, oracle", "best_of_n", {"n": 8}, "oracle"),
    ("beam search (N=4, M=2), oracle", "beam_search", {"n": 4, "width": 2}, "oracle"),
]
SETTINGS = [("countdown", 3), ("countdown", 4), ("arith", 3), ("arith", 4)]
CLI_FLAGS = {"n": "--n", "width": "--width"}


def command(model: str, task: str, level: int, k: int, strategy: str, params: dict, scorer: str | None,
            aggregate: str) -> str:
    args = ["ttscale", "solve", "--model", model, "--task", task, "--level", str(level),
            "--num-problems", str(k), "--strategy", strategy]
    for key, v in params.items():
        args += [CLI_FLAGS[key], str(v)] if key in CLI_FLAGS else ["--param", f"{key}={v}"]
    if scorer:
        args += ["--scorer", scorer]
        if scorer == "prm":
            args += ["--aggregate", aggregate]
    return " ".join(shlex.quote(a) for a in args + ["--json"])


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ttscale-small")
    ap.add_argument("--num-problems", type=int, default=50)
    ap.add_argument("--aggregate", default="last")
    ap.add_argument("--out", default="benchmarks/results/strategies_equal_flops.jsonl")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from ttscale.eval.solve import run_solve

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["task"], r["level"], r["label"], r["num_problems"], r["model"]))
    with open(out, "a") as f:
        for task, level in SETTINGS:
            for label, strategy, params, scorer in ROWS:
                key = (task, level, label, args.num_problems, args.model)
                if key in done:
                    continue
                t0 = time.time()
                res = run_solve(args.model, task=task, level=level, num_problems=args.num_problems,
                                strategy=strategy, params=params, scorer=scorer,
                                aggregate=args.aggregate)
                k = sum(r["correct"] for r in res["problems"])
                n = res["num_problems"]
                row = {"task": task, "level": level, "label": label, "model": args.model,
                       "strategy": strategy, "params": params, "scorer": scorer,
                       "accuracy": res["accuracy"], "correct": k, "num_problems": n,
                       "ci95": wilson(k, n), "mean_flops": res["mean_flops"],
                       "mean_policy_flops": sum(r["policy_flops"] for r in res["problems"]) / n,
                       "mean_verifier_flops": sum(r["verifier_flops"] for r in res["problems"]) / n,
                       "mean_tokens": res["mean_tokens"], "wall_s": round(time.time() - t0, 1),
                       "command": command(args.model, task, level, args.num_problems, strategy,
                                          params, scorer, args.aggregate)}
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"{task} L{level} {label:<34} acc {row['accuracy']:.2f} "
                      f"flops {row['mean_flops']:.3g} ({row['wall_s']} s)", flush=True)
    print(table(out, args.num_problems, args.model))


def table(path: Path, k: int, model: str) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows = [r for r in rows if r["num_problems"] == k and r["model"] == model]
    lines = []
    for task, level in SETTINGS:
        sel = [r for r in rows if r["task"] == task and r["level"] == level]
        if not sel:
            continue
        ref = next((r["mean_flops"] for r in sel if r["label"].startswith("best-of-8, PRM")), None)
        lines += [f"\n**{task}, level {level}** ({k} test problems, {model}; budget = best-of-8 "
                  f"with the PRM, {ref:.3g} FLOPs per problem)\n" if ref else "",
                  "| strategy | accuracy | 95% CI | mean FLOPs | x budget | verifier share |",
                  "|---|---|---|---|---|---|"]
        for r in sel:
            share = r["mean_verifier_flops"] / r["mean_flops"] if r["mean_flops"] else 0.0
            x = r["mean_flops"] / ref if ref else math.nan
            lines.append(f"| {r['label']} | {r['accuracy']:.2f} | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} "
                         f"| {r['mean_flops']:.3g} | {x:.2f} | {share:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
