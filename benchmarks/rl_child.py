"""Issue 18's table: a trained child against its parents, greedy, majority@n and pass@k per level.

For each row (a model asked at an effort), on the same held-out problems of each (task, level):
a greedy answer and `--n` samples at temperature 1 per problem, with task stops. Reported per
level: greedy accuracy, majority@n, pass@k for k = 1, 2, 4, ... n (the unbiased estimator over
the n samples), mean greedy tokens, and at effort "auto" the share of greedy and of sampled
solutions that chose the long mode. One JSON line per (row, task, level) is appended to --out
as soon as it is measured; a re-run skips what --out already holds.

    python benchmarks/rl_child.py --row parent=ttscale-small:low --row child=runs/auto/rl:auto \\
        --levels 3,4,5 --num-problems 200 --n 16 --out benchmarks/results/rl_child.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ttscale.engine import load_generator
from ttscale.eval.evaluate import MAX_TOKENS, evaluate
from ttscale.models.registry import resolve_policy
from ttscale.tasks import get_task
from ttscale.tasks.effort import apply_effort, check_effort, max_tokens_for


def measure(gen, task, problems, n: int, seed: int, max_tokens: int) -> dict:
    r = evaluate(gen, task, problems, n=n, seed=seed, max_tokens=max_tokens)
    out = {"greedy_acc": r.greedy_acc, "mean_tokens": r.mean_tokens,
           "flops_per_problem": r.flops / max(len(problems), 1), "greedy_long_share": r.greedy_long_share}
    if n:
        out.update(maj_acc=r.maj_acc, pass_at_k=r.pass_at_k, sampled_long_share=r.sampled_long_share)
    return out


def table(path: Path, num_problems: int, split: str) -> str:
    """Markdown: greedy accuracy per row (model, effort) and level, the long-mode share of an auto
    row in brackets, the mean over levels 3-5 of both tasks, and mean greedy tokens."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs = [r for r in recs if r["num_problems"] == num_problems and r["split"] == split]
    cells: dict[tuple, dict] = {}
    for r in recs:  # the last record of a cell wins (a rerun with --n 16 adds maj@16 to it)
        cells[(r["row"], r["effort"], r["task"], r["level"])] = r
    rows = list(dict.fromkeys((r["row"], r["effort"]) for r in recs))
    tasks = list(dict.fromkeys(r["task"] for r in recs))
    out = ["| row | effort | " + " | ".join(f"{t} L1-5" for t in tasks)
           + " | mean L3-5 | mean L1-5 | tokens | tokens per correct |",
           "|---|---|" + "---|" * (len(tasks) + 4)]
    for row, effort in rows:
        parts, hard, tokens, accs_all = [], [], [], []
        for t in tasks:
            accs = []
            for lv in range(1, 6):
                c = cells.get((row, effort, t, lv))
                if c is None:
                    accs.append("-")
                    continue
                share = f" ({c['greedy_long_share']:.0%})" if c.get("greedy_long_share") is not None else ""
                accs.append(f"{c['greedy_acc']:.1%}{share}")
                tokens.append(c["mean_tokens"])
                accs_all.append(c["greedy_acc"])
                if lv >= 3:
                    hard.append(c["greedy_acc"])
            parts.append(" / ".join(accs))
        mean = f"{sum(hard) / len(hard):.1%}" if len(hard) == 3 * len(tasks) else "-"
        full = len(accs_all) == 5 * len(tasks)
        mean_all = f"{sum(accs_all) / len(accs_all):.1%}" if full else "-"
        # every cell has the same number of problems: total greedy tokens over total right answers
        per_correct = f"{sum(tokens) / sum(accs_all):.0f}" if full and sum(accs_all) else "-"
        out.append(f"| {row} | {effort} | " + " | ".join(parts) + f" | {mean} | {mean_all} | "
                   f"{sum(tokens) / len(tokens):.0f} | {per_correct} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", default=[], help="NAME=MODEL:EFFORT (repeatable)")
    ap.add_argument("--tasks", default="arith,countdown")
    ap.add_argument("--levels", default="1,2,3,4,5")
    ap.add_argument("--num-problems", type=int, default=200)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--split", default="heldout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rl_child.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of --out (--split, --num-problems) and stop")
    a = ap.parse_args()
    if a.table:
        print(table(a.out, a.num_problems, a.split))
        return
    rows = []
    for spec in a.row:
        name, _, rest = spec.partition("=")
        model, _, effort = rest.rpartition(":")
        if not (name and model):
            raise SystemExit(f"--row {spec!r} is not NAME=MODEL:EFFORT")
        rows.append((name, resolve_policy(model), check_effort(effort)))
    fields = ("row", "model", "effort", "task", "level", "num_problems", "n", "split", "seed")
    done = set()
    if a.out.exists():
        for line in a.out.read_text().splitlines():
            r = json.loads(line)
            done.add(tuple(r[f] for f in fields))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for name, model, effort in rows:
        gen = load_generator(model)
        for task_name in a.tasks.split(","):
            task = get_task(task_name)
            for level in (int(x) for x in a.levels.split(",")):
                key = (name, model, effort, task_name, level, a.num_problems, a.n, a.split, a.seed)
                if key in done:
                    continue
                problems = [apply_effort(p, effort)
                            for p in task.problems(a.split, level, a.num_problems, seed=a.seed)]
                m = measure(gen, task, problems, a.n, a.seed, max_tokens_for(effort, MAX_TOKENS))
                rec = dict(zip(fields, key), **m)
                with a.out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name:>12} {effort:>4} {task_name:>9} L{level} greedy {m['greedy_acc']:.3f} "
                      f"maj {m.get('maj_acc', float('nan')):.3f} long {m['greedy_long_share']} "
                      f"tokens {m['mean_tokens']:.0f}", flush=True)


if __name__ == "__main__":
    main()
