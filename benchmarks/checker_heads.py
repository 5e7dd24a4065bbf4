"""Held-out within-problem AUROC of step checkers, with and without their fitted head.

Draws held-out problems (`--problems` per level, at `--seed`) of arith and countdown levels 2-4
in the long mode, a greedy chain and 16 samples at T=1.0 from ttscale-small each (as the PRM
card does), and scores them with every reward model named: a PRM directory or shipped name
(its head included), or `raw:<checking LM>` (the checker's exp(smallest gap), no head). Prints
per (task, level) and per task over all levels (every right-wrong pair of one problem counts
once; `train.prm.quality_by_task`).

    python benchmarks/checker_heads.py --problems 60 --seed 1 ttscale-prm raw:ttscale-small-long
"""
from __future__ import annotations

import argparse
import json

from ttscale.engine import load_generator
from ttscale.models.registry import resolve_model
from ttscale.rewards.lm_check import LMStepChecker
from ttscale.rewards.prm import load_reward_model
from ttscale.train.prm import PRMConfig, draw_heldout, heldout_quality, quality_by_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scorers", nargs="+", help="PRM name or directory, or raw:<checking LM>")
    ap.add_argument("--problems", type=int, default=60, help="held-out problems per level")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", default="ttscale-small")
    args = ap.parse_args()
    cfg = PRMConfig(policy=args.policy, tasks=["arith", "countdown"], levels=[2, 3, 4],
                    efforts=["high"], heldout_problems=args.problems, heldout_samples=16,
                    max_tokens=768, seed=args.seed)
    draws = draw_heldout(load_generator(resolve_model(args.policy)), cfg)
    for name in args.scorers:
        scorer = LMStepChecker(name[4:]) if name.startswith("raw:") else load_reward_model(name)
        rows = heldout_quality(scorer, draws)
        for q in rows:
            print(f"{name} | {q['task']} {q['level']} | {q['within_problem_auroc']:.3f} "
                  f"({q['mixed_problems']}) | greedy {q['greedy_acc']:.1%} | best-of-16 "
                  f"{q['best_of_n_acc']:.1%}")
        for t in quality_by_task(rows):
            print(f"{name} | {t['task']}, levels 2-4 | {t['within_problem_auroc']:.3f} "
                  f"({t['mixed_problems']} problems, {t['pairs']} pairs)")
        print(json.dumps({"scorer": name, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
