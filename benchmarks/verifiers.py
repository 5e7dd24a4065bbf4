"""Verifiers judged where it matters, and the cascade they gate (docs/results.md, "Verifiers").

For each (task, level): the test-split samples written by `ttscale verifier-quality --samples-out`
(a greedy answer and 16 samples at T=1 per problem) and held-out samples drawn here the same way.
For each scorer it prints the within-problem AUROC, best-of-16 against greedy, and the cascade
(greedy; escalate to `escalate` over greedy + n samples when the scorer flags the greedy answer)
with its threshold chosen on the held-out samples only (`strategies.cascade.best_threshold`),
then applied to the test samples; then, per task and scorer, the within-problem AUROC on the
held-out samples of all its levels together (every right-wrong pair of one problem counts once).
Results are appended to benchmarks/results/verifiers.jsonl.

    python benchmarks/verifiers.py --settings arith:3,countdown:3 --scorer prm --scorer checker
    python benchmarks/verifiers.py --settings arith:3 --effort high --scorer prm \
        --escalate best_of_n --cascade-n 16     # the long mode (stored as *-high.jsonl)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ttscale.engine import load_generator
from ttscale.eval.solve import load_problems
from ttscale.eval.verifier_quality import (cascade_rows, cascade_summary, draw_samples, load_samples,
                                           parse_scorer_spec, save_samples, verifier_quality)
from ttscale.rewards import get_scorer
from ttscale.strategies.cascade import best_threshold
from ttscale.tasks import get_task
from ttscale.tasks.effort import apply_effort, max_tokens_for
from ttscale.train.prm import quality_by_task

RUNS = Path("runs/verifiers")
RESULTS = Path(__file__).parent / "results" / "verifiers.jsonl"


def samples(kind: str, model: str, task: str, level: int, k: int, n: int, effort: str = "low",
            temperature: float = 1.0):
    """Stored samples of `kind` (test "samples" or "heldout"), drawn and saved when missing."""
    tag = "" if effort == "low" else f"-{effort}"
    tag += "" if temperature == 1.0 else f"-t{temperature}"
    path = RUNS / f"{kind}-{task}-L{level}{tag}.jsonl"
    if not path.exists():
        split = "test" if kind == "samples" else "heldout"
        problems = [apply_effort(p, effort) for p in load_problems(get_task(task), level, k, split)]
        drawn = draw_samples(load_generator(model), problems, n=n, temperature=temperature,
                             max_tokens=max_tokens_for(effort, 128))
        save_samples(path, drawn)
    return load_samples(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ttscale-small")
    ap.add_argument("--settings", default="arith:3,countdown:3")
    ap.add_argument("--scorer", action="append", default=None, help="name[:aggregate][=model dir]")
    ap.add_argument("--heldout-problems", type=int, default=60)
    ap.add_argument("--cascade-n", type=int, default=8)
    ap.add_argument("--escalate", default="majority")
    ap.add_argument("--effort", default="low", help="low, or high: the long mode")
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    heldout: dict[str, list[dict]] = {}  # scorer: held-out rows (`quality_by_task`'s input)
    for setting in args.settings.split(","):
        task_name, level = setting.split(":")
        task, level = get_task(task_name), int(level)
        test = samples("samples", args.model, task_name, level, 200, 16, args.effort, args.temperature)
        held = samples("heldout", args.model, task_name, level, args.heldout_problems, 16,
                       args.effort, args.temperature)
        for spec in args.scorer or ["prm"]:
            spec, _, scorer_model = spec.partition("=")
            name, how = parse_scorer_spec(spec)
            if name == "checker" and not task.answer_checkable:
                continue
            scorer = get_scorer(name, task=task, model=scorer_model or None, aggregate=how)
            t0 = time.time()
            q = verifier_quality(task, test, scorer)
            hq = verifier_quality(task, held, scorer)["within_problem_auroc"]
            heldout.setdefault(spec, []).append(
                {"task": task_name, "effort": args.effort, "within_problem_auroc": hq["auroc"],
                 "mixed_problems": hq["groups"], "pairs": hq["pairs"]})
            cal = cascade_rows(task, held, scorer, args.cascade_n, args.escalate)
            threshold, _ = best_threshold([r.greedy_score for r in cal], [r.greedy_right for r in cal],
                                          [r.escalated_right for r in cal])
            casc = cascade_summary(cascade_rows(task, test, scorer, args.cascade_n, args.escalate), threshold)
            row = {"model": args.model, "task": task_name, "level": level, "effort": args.effort,
                   "temperature": args.temperature, "scorer": name, "aggregate": how,
                   "scorer_model": scorer_model or None, "problems": q["problems"],
                   "within_problem_auroc": q["within_problem_auroc"],
                   "heldout_within_problem_auroc": hq, "first_step": q["step_auroc_first_step"],
                   "first_error": q["step_auroc_first_error"], "greedy_acc": q["greedy_acc"],
                   "best_of_16_acc": q["best_of_n_acc"], "maj_acc": q["maj_acc"],
                   "weighted_maj_acc": q["weighted_maj_acc"], "pass_at_16": q["pass_at_n"],
                   "pooled_auroc": q["pooled_auroc"], "processbench_f1": q["processbench_f1"],
                   "cascade": {**casc, "n": args.cascade_n, "escalate": args.escalate,
                               "calibrated_on": f"{len(cal)} held-out problems",
                               "flops_x_greedy": casc["mean_flops"] / casc["greedy_flops"]},
                   "best_of_16_flops_x_greedy": q["best_of_n_flops"] / q["greedy_flops"],
                   "wall_s": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d")}
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            w, c = row["within_problem_auroc"], row["cascade"]
            print(f"| {task_name} {level} | {name}:{how} | {w['auroc']:.2f} ({w['groups']}) | "
                  f"{row['first_step']['auroc']:.2f} | {row['first_error']['auroc']:.2f} | "
                  f"{row['greedy_acc']:.1%} | {row['best_of_16_acc']:.1%} | {c['accuracy']:.1%} at "
                  f"{c['flops_x_greedy']:.1f}x (t={c['threshold']:.2f}, {c['escalation_rate']:.0%} escalated) | "
                  f"{row['pooled_auroc']:.2f} | {row['processbench_f1']:.2f} | held out "
                  f"{hq['auroc']:.2f} ({hq['groups']}) |", flush=True)
    for spec, rows in heldout.items():
        for t in quality_by_task(rows):
            print(f"held out, {t['task']}, all levels above, {spec}: within-problem AUROC "
                  f"{t['within_problem_auroc']:.3f} ({t['mixed_problems']} problems, {t['pairs']} pairs)")


if __name__ == "__main__":
    main()
