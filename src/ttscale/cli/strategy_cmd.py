"""`ttscale solve` (one strategy over problems) and `ttscale select` (offline selection)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ttscale.cli import options
from ttscale.cli.app import app
from ttscale.strategies.stopping import AC_THRESHOLD, CONFIDENCE, ESC_WINDOW


@app.command("solve")
def solve_cmd(
    model: str = typer.Option("ttscale-small", "--model", help="Model name, directory, or the "
                              "served model's name with --backend openai."),
    task: str = typer.Option("arith", "--task", help="arith, countdown or a .jsonl file."),
    level: Optional[int] = typer.Option(None, "--level", help="Level 1-5 (built-in default 3)."),
    num_problems: int = typer.Option(10, "--num-problems", help="Problems to solve."),
    split: str = typer.Option("test", "--split", help="train, heldout or test."),
    problem_seed: int = typer.Option(0, "--problem-seed", help="Which problems are drawn."),
    strategy: str = typer.Option("greedy", "--strategy", help="Strategy name."),
    n: Optional[int] = typer.Option(None, "--n", help="Samples, beams, or MCTS iterations per problem."),
    width: Optional[int] = typer.Option(None, "--width", help="Tree-search width."),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    param: list[str] = typer.Option([], "--param", help="Any strategy parameter as key=value "
                                    "(repeatable), e.g. --param window=4."),
    scorer: Optional[str] = typer.Option(None, "--scorer", help="oracle, prm, orm, likelihood, "
                                         "self-certainty, judge or checker (ignored by strategies "
                                         "that use no scorer)."),
    scorer_model: Optional[str] = typer.Option(None, "--scorer-model", help="PRM/ORM "
                                               "directory, or the judge's model."),
    aggregate: str = typer.Option("last", "--aggregate", help="Step-score aggregation: last, "
                                  "min, prod or mean."),
    backend: str = options.BACKEND,
    base_url: list[str] = options.BASE_URL,
    shape_from: Optional[str] = options.SHAPE_FROM,
    n_params: Optional[int] = options.N_PARAMS,
    n_layer: Optional[int] = options.N_LAYER,
    d_model: Optional[int] = options.D_MODEL,
    timeout: Optional[float] = options.TIMEOUT,
    max_retries: Optional[int] = options.MAX_RETRIES,
    endpoint_concurrency: Optional[int] = options.ENDPOINT_CONCURRENCY,
    kv_memory: Optional[str] = options.KV_MEMORY,
    sparse_attention: Optional[str] = options.SPARSE_ATTENTION,
    speculative: Optional[str] = options.SPECULATIVE,
    shots: int = options.SHOTS,
    shots_from: Optional[str] = options.SHOTS_FROM,
    effort: str = options.EFFORT,
    samples_out: Optional[Path] = typer.Option(None, "--samples-out", help="Also write every "
                                               "candidate as a store for `ttscale select`."),
    trees_out: Optional[Path] = typer.Option(None, "--trees-out", help="Save each search "
                                             "tree as DIR/<problem>.json and .html."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="A plan from `ttscale plan`: pick "
                                        "the strategy per problem within --budget."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Total FLOPs for all problems "
                                           "with --plan (probes included; never exceeded)."),
    latency_budget: Optional[float] = typer.Option(None, "--latency-budget", help="With --plan: "
                                                   "wall seconds per problem; only "
                                                   "configurations expected within it."),
) -> None:
    """Run one test-time strategy over problems: accuracy and exact compute per problem."""
    gen_options = options.generator_options(backend, base_url, shape_from, n_params, n_layer,
                                            d_model, timeout, max_retries, kv_memory,
                                            endpoint_concurrency, sparse_attention,
                                            speculative)
    if plan is not None or budget is not None or latency_budget is not None:
        from ttscale.cli.sweep_cmd import solve_with_plan_cmd

        solve_with_plan_cmd(model, plan, budget, task, level, num_problems, split, problem_seed,
                            scorer, scorer_model, backend, gen_options, seed, as_json,
                            latency_budget)
        return
    from ttscale.eval.solve import parse_param_pairs, run_solve

    params: dict[str, object] = {}
    n_key = "iterations" if strategy == "mcts" else "n"  # MCTS spends its budget in iterations
    for key, value in ((n_key, n), ("width", width), ("temperature", temperature),
                       ("max_tokens", max_tokens), ("seed", seed)):
        if value is not None:
            params[key] = value
    params.update(parse_param_pairs(param))
    out = run_solve(model, task=task, level=level, num_problems=num_problems, strategy=strategy,
                    params=params, scorer=scorer, scorer_model=scorer_model,
                    aggregate=aggregate, split=split, problem_seed=problem_seed,
                    backend=backend, generator_options=gen_options, samples_out=samples_out,
                    trees_out=trees_out, shots=shots, shots_from=shots_from, effort=effort)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for r in out["problems"]:
        mark = "ok " if r["correct"] else "-- "
        print(f"{mark}{r['question']:<28} answer={r['answer']!s:<16} gold={r['gold']:<8} "
              f"flops={_flops(r['flops'])}")
    print(f"\n{out['strategy']}: accuracy {out['accuracy']:.3f} on {out['num_problems']} "
          f"problems; mean {_flops(out['mean_flops'])} FLOPs, {out['mean_tokens']:.0f} tokens")


def _flops(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3g}"


@app.command("select")
def select_cmd(
    samples: Path = typer.Option(..., "--samples", help="JSONL store: problem, answer, "
                                 "responses, optional scores and preds."),
    rules: Optional[str] = typer.Option(None, "--rules", help="Comma-separated rules "
                                        "(default: all that the store supports)."),
    aggregate: str = typer.Option("last", "--aggregate", help="Step scores -> one score."),
    window: int = typer.Option(ESC_WINDOW, "--window", help="ESC window."),
    threshold: float = typer.Option(AC_THRESHOLD, "--threshold",
                                    help="Adaptive-Consistency threshold."),
    confidence: float = typer.Option(CONFIDENCE, "--confidence", help="confident_consistency's "
                                     "score threshold (on the store's score scale)."),
    draws: int = typer.Option(500, "--draws", help="Random orderings per problem when exact "
                              "enumeration is too large."),
    seed: int = typer.Option(0, "--seed"),
    max_n: Optional[int] = typer.Option(None, "--max-n", help="Largest N to report."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate every selection rule at every N by subsampling a store of samples."""
    from ttscale.eval.select import select_file

    out = select_file(samples, rules=rules.split(",") if rules else None, aggregate=aggregate,
                      window=window, threshold=threshold, draws=draws, seed=seed, max_n=max_n,
                      confidence=confidence)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    names = list(out)
    budgets = list(next(iter(out.values()))) if out else []
    print(f"{'N':>5} " + " ".join(f"{r:>20}" for r in names))
    for nn in budgets:
        cells = [f"{out[r][nn]['mean']:.3f} [{out[r][nn]['ci'][0]:.2f},{out[r][nn]['ci'][1]:.2f}]"
                 for r in names]
        print(f"{nn:>5} " + " ".join(f"{c:>20}" for c in cells))
