"""`ttscale sweep`, `ttscale plan`, `ttscale report`: measure, decide, show.

Thin layers over ttscale.eval.sweep (run_sweep, default_config), ttscale.eval.report
(analyze, write_report, make_plan).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ttscale.cli import options
from ttscale.cli.app import app
from ttscale.errors import TTScaleError

DEFAULT_OUT = "runs/sweep-default"


def _parse_list(text: str | None, name: str, kind: type, what: str) -> list | None:
    """A comma-separated option as a list of `kind`, or a one-line error naming it."""
    if text is None:
        return None
    try:
        return [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise TTScaleError(f"--{name} {text!r} is not a comma-separated list of {what}") from None


def _ints(text: str | None, name: str) -> list[int] | None:
    return _parse_list(text, name, int, "integers")


def _floats(text: str | None, name: str) -> list[float] | None:
    return _parse_list(text, name, float, "numbers")


@app.command("sweep")
def sweep_cmd(
    model: list[str] = typer.Option([], "--model", help="Model(s) that run the whole grid "
                                    "(default: the smallest shipped model)."),
    grid_model: Optional[str] = typer.Option(None, "--grid-model", help="The embedded default "
                                             "with this model running its grid (the other "
                                             "settings kept; --model starts from a bare grid)."),
    baseline_model: list[str] = typer.Option([], "--baseline-model", help="Model(s) that "
                                             "run only greedy (default: the largest shipped)."),
    task: list[str] = typer.Option([], "--task", help="arith, countdown or a .jsonl file "
                                   "(repeatable)."),
    levels: Optional[str] = typer.Option(None, "--levels", help="Built-in levels, e.g. 1,2,3."),
    num_problems: Optional[int] = typer.Option(None, "--num-problems", help="Per task and level."),
    split: Optional[str] = typer.Option(None, "--split", help="train, heldout or test."),
    n_max: Optional[int] = typer.Option(None, "--n-max", help="Samples stored per problem."),
    ns: Optional[str] = typer.Option(None, "--ns", help="Budgets n of the selection rules, "
                                     "e.g. 1,2,4,8,16."),
    rules: Optional[str] = typer.Option(None, "--rules", help="Selection rules, comma-separated: "
                                        "majority, best_of_n, weighted_majority, pass_at_k, esc, "
                                        "adaptive_consistency, confident_consistency."),
    confidences: Optional[str] = typer.Option(None, "--confidences", help="confident_consistency's "
                                              "score thresholds, e.g. 0.9,0.95 (one configuration "
                                              "each; default: 9 from 0.8 to 0.995)."),
    strategies: Optional[str] = typer.Option(None, "--strategies", help="Strategies run for "
                                             "real, e.g. 'greedy; beam_search:n=4,width=2'."),
    scorer: Optional[str] = typer.Option(None, "--scorer", help="likelihood (default), "
                                         "prm, orm, self-certainty or oracle (scores samples; 'none' for none)."),
    side_scorer: Optional[str] = typer.Option(None, "--side-scorer", help="checker (default "
                                              "of the embedded run) or none: scores shown beside "
                                              "the headline, never in it (tasks it can check)."),
    replicates: Optional[int] = typer.Option(None, "--replicates", help="Sample orders per rule."),
    temperature: Optional[str] = typer.Option(None, "--temperature", help="Sampling "
                                              "temperature(s), e.g. 0.6 or 0.6,1.0 (a grid "
                                              "dimension; the first is the base)."),
    min_p: Optional[str] = typer.Option(None, "--min-p", help="min-p value(s) in [0, 1], e.g. "
                                        "0,0.1 (a grid dimension; 0 = off)."),
    effort: Optional[str] = typer.Option(None, "--effort", help="Effort(s): low, high, auto, e.g. "
                                         "low,high (a grid dimension)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Problems and sampling seed."),
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
    out: Path = typer.Option(Path(DEFAULT_OUT), "--out", help="Results directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in --out "
                                "(skips records already there); otherwise --out is replaced."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.md and plots."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure strategies x budgets, fit the scaling laws, derive the plan, write the report.

    With no arguments: the embedded default (shipped models, built-in tasks), within 10
    minutes on 2 CPU cores.
    """
    from ttscale.eval.report import analyze, write_report
    from ttscale.eval.sweep import (SweepConfig, default_config, make_generator, parse_runs,
                                    run_sweep)

    if threads:
        import torch

        torch.set_num_threads(threads)
    if model and grid_model:
        raise typer.BadParameter(f"--grid-model {grid_model!r} with --model: accepted is one of "
                                 "them (--model: a bare grid; --grid-model: the embedded default)")
    cfg: SweepConfig = (SweepConfig(models=list(model)) if model
                        else default_config(grid_model=grid_model))
    overrides: dict[str, Any] = {
        "baseline_models": list(baseline_model) or None, "tasks": list(task) or None,
        "levels": _ints(levels, "levels"), "num_problems": num_problems, "split": split,
        "n_max": n_max, "ns": _ints(ns, "ns"), "replicates": replicates,
        "max_tokens": max_tokens, "seed": seed,
        "min_ps": _floats(min_p, "min-p"), "confidences": _floats(confidences, "confidences"),
        "efforts": [e.strip() for e in effort.split(",") if e.strip()] if effort is not None else None,
        "rules": [r.strip() for r in rules.split(",") if r.strip()] if rules else None,
        "runs": parse_runs(strategies) if strategies is not None else None,
    }
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    temps = _floats(temperature, "temperature")
    if temps is not None:
        cfg.temperature, cfg.temperatures = (temps[0], temps) if temps else (cfg.temperature, [])
    if scorer is not None:
        cfg.scorer = None if scorer.lower() == "none" else scorer
    if side_scorer is not None:
        cfg.side_scorers = [x for x in side_scorer.replace(" ", "").split(",") if x and x != "none"]
    if ns is not None and n_max is None:
        cfg.n_max = max(cfg.ns)
    cfg.backend = backend
    cfg.shots, cfg.shots_from = shots, shots_from
    gen_options = options.generator_options(backend, base_url, shape_from, n_params, n_layer,
                                            d_model, timeout, max_retries, kv_memory,
                                            endpoint_concurrency, sparse_attention,
                                            speculative)
    generators = None
    if gen_options:  # a server's options, or a local engine's (--kv-memory, ...)
        generators = {m: make_generator(m, backend, **gen_options)
                      for m in cfg.models + cfg.baseline_models}
    res = run_sweep(cfg, out, resume=resume, progress=True, generators=generators)
    analysis = analyze(out)
    if report:
        analysis["report"] = str(write_report(out, analysis))
    analysis["wall_s"] = res.wall_s
    analysis["written"] = res.written
    if as_json:
        print(json.dumps(_json_summary(analysis), indent=1, default=float))
        return
    print(render_summary(analysis))


def _json_summary(a: dict[str, Any]) -> dict[str, Any]:
    keep = ("results_dir", "model", "num_problems", "num_records", "frontier", "latency_frontier", "fits",
            "headline", "plan", "report", "wall_s", "written", "planner_curve")
    return {k: a[k] for k in keep if k in a}


def render_summary(a: dict[str, Any]) -> str:
    """The frontier table, the fitted laws, the plan and the headline numbers, as text."""
    lines = [f"sweep of {a['model']}: {a['num_problems']} problems, {a['num_records']} records "
             f"in {a['results_dir']}", "", "compute-optimal frontier:",
             f"  {'FLOPs/problem':>14}  {'accuracy':>8}  configuration"]
    lines += [f"  {p['flops']:>14.3g}  {100 * p['accuracy']:>7.1f}%  {p['config']}" for p in a["frontier"]]
    lines += ["", "fitted laws (acc = a_max - b*(C/C0)^-alpha; N* = where a doubling gains < 1 point):"]
    for s, f in a["fits"].items():
        if s == "pass_at_k":
            note = f"a={f.get('a')}, b={f.get('b')}" if f.get("a") is not None else f.get("error")
            lines.append(f"  coverage pass@k = exp(a*k^b): {note}")
            continue
        if f.get("alpha") is None:
            lines.append(f"  {s:<22} no fit: {f.get('error')}")
        else:
            lines.append(f"  {s:<22} alpha={f['alpha']:.3g}  a_max={f['a_max']:.3f}  "
                         f"N*={f['n_star']:.3g} FLOPs  R2={f['r2']:.3f}")
    plan = a.get("plan")
    if plan:
        lines += ["", f"plan ({plan['path']}): probe {plan['probe_cost']:.3g} FLOPs, "
                  f"difficulty bins {plan['bins']}"]
        for r in plan["recommendations"]:
            lines.append(f"  {r['budget']:<7} {r['flops']:>10.3g} FLOPs: {r['measured']:<40} "
                         f"per bin: {', '.join(r['per_bin'])}   (seed: {r['seed']})")
    h = a["headline"]
    p = h.get("planner_vs_best_fixed") or {}
    lines += ["", "headline (held-out problems):",
              f"  planner vs best fixed: accuracy gain {_pts(p.get('accuracy_gain'))}, "
              f"FLOPs saving {_x(p.get('flops_saving'))}"]
    q = h.get("planner_vs_best_fixed_hindsight")
    if q:
        lines.append(f"  planner vs the fixed configuration best with hindsight: accuracy gain "
                     f"{_pts(q.get('accuracy_gain'))}, FLOPs saving {_x(q.get('flops_saving'))}")
    s = h.get("small_search_vs_large_greedy")
    if s:
        lines.append(f"  {s['small_model']} + {s['small_config']}: {_pct(s['small_accuracy'])} at "
                     f"{_g(s['small_flops'])} FLOPs vs {s['large_model']} greedy: "
                     f"{_pct(s['large_accuracy'])} at {_g(s['large_flops'])} FLOPs")
    lines.append(f"  adaptive stopping saves {_pct(h.get('adaptive_stopping_saving'))} of samples "
                 "at equal accuracy")
    if a.get("report"):
        lines += ["", f"report: {a['report']}"]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f} points"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


@app.command("plan")
def plan_cmd(
    results: Path = typer.Option(..., "--results", help="A sweep's results directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Plan file (default DIR/plan.json)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to plan for (default: the "
                                        "one the grid ran on)."),
    latency_budget: Optional[float] = typer.Option(None, "--latency-budget", help="Wall seconds "
                                                   "per problem: plan only with configurations "
                                                   "expected to answer within it."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Fit the difficulty-aware compute-optimal plan from a sweep's results and save it."""
    from ttscale.eval.report import make_plan

    check_latency_budget(latency_budget)
    plan, path = make_plan(results, model=model, path=out, latency_budget=latency_budget)
    if as_json:
        print(json.dumps({"path": str(path), **plan.to_dict()}, indent=1))
        return
    print(f"plan for {plan.model} from {plan.calibration['problems']} problems -> {path}")
    print(f"probe: {plan.probe_samples} samples, {plan.probe_cost:.3g} FLOPs, "
          f"{plan.probe_latency:.3g} s; bin edges {plan.edges}"
          + (f"; latency budget {plan.latency_budget:g} s per problem" if plan.latency_budget else ""))
    if not plan.can_probe:
        print("  the probe does not fit the latency budget: problems are answered without one")
    for b, frontier in enumerate(plan.bins):
        steps = ", ".join(f"{o.config} (+{o.cost:.3g}: {100 * o.accuracy:.0f}%, {o.latency:.2g} s)"
                          for o in frontier)
        print(f"  bin {b}: {steps}")
    blind = ", ".join(f"{o.config} ({o.cost:.3g}: {100 * o.accuracy:.0f}%, {o.latency:.2g} s)"
                      for o in plan.blind)
    print(f"  no probe: {blind}")


def check_latency_budget(seconds: float | None) -> None:
    """A latency budget is a positive, finite number of seconds (or none)."""
    import math

    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise TTScaleError(f"--latency-budget {seconds!r} is out of range; accepted: seconds > 0")


@app.command("report")
def report_cmd(
    results_dir: Path = typer.Argument(..., help="A sweep's results directory."),
    as_json: bool = typer.Option(False, "--json", help="Also print the analysis as JSON."),
) -> None:
    """Render report.md and PNG plots from a stored results directory."""
    from ttscale.eval.report import analyze, write_report

    a = analyze(results_dir)
    path = write_report(results_dir, a)
    if as_json:
        print(json.dumps({**_json_summary(a), "report": str(path)}, indent=1, default=float))
        return
    a["report"] = str(path)
    print(render_summary(a))


def solve_with_plan_cmd(model: str, plan: Optional[Path], budget: Optional[float], task: str,
                        level: Optional[int], num_problems: int, split: str, problem_seed: int,
                        scorer: Optional[str], scorer_model: Optional[str], backend: str,
                        generator_options: dict[str, Any], seed: Optional[int], as_json: bool,
                        latency_budget: Optional[float] = None) -> None:
    """`ttscale solve --plan FILE --budget FLOPS [--latency-budget S]` (called from the solve
    command; `generator_options` from `options.generator_options`)."""
    from ttscale.eval.planned import run_planned

    if plan is None or budget is None:
        raise TTScaleError("--plan and --budget go together: give a plan file and a total "
                           "FLOP budget")
    check_latency_budget(latency_budget)
    out = run_planned(model, str(plan), budget, task=task, level=level,
                      num_problems=num_problems, split=split, problem_seed=problem_seed,
                      scorer=scorer, scorer_model=scorer_model, backend=backend,
                      generator_options=generator_options,
                      seed=seed or 0, latency_budget=latency_budget)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for r in out["problems"]:
        mark = "ok " if r["correct"] else "-- "
        print(f"{mark}{r['problem_id']:<28} {r['config']:<44} answer={r['answer']!s:<14} "
              f"flops={r['flops']:.3g}")
    print(f"\nplan {plan} ({out['mode']}): accuracy {out['accuracy']:.3f} on "
          f"{out['num_problems']} problems; spent {out['spent']:.3g} of {out['budget']:.3g} FLOPs")
