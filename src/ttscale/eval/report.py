"""From a sweep's records to answers: curves, frontier, fits, plan, headline numbers, report.

`analyze(results_dir)` computes everything as one JSON-able dict (what `ttscale sweep --json`
prints); `write_report(results_dir)` renders it as report.md with PNG plots and saves the plan
(plan.json) beside the results.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttscale.errors import TTScaleError
from ttscale.eval.evaluate import pass_at_k
from ttscale.eval.store import load_results, load_samples, split_side
from ttscale.eval.heldout import cv_cheapest, cv_choose, problem_matrix
from ttscale.planner.fits import fit_bon_error, fit_coverage, fit_power_law, leave_one_out
from ttscale.planner.plan import (budget_grid, build_table, cross_validate, fit_plan,
                                  config_id, fixed_points, grid_model, held_out_reference,
                                  per_task_fixed_points, planner_headline)

SEED_TABLE = [("low", "better base model, greedy decoding"),
              ("medium", "best-of-N (N = 4-16) or chain of thought"),
              ("high", "tree search with a PRM; extended chain of thought")]
MODELS_FILE = "models.json"
PLAN_FILE = "plan.json"
REPORT_FILE = "report.md"


# -- curves ------------------------------------------------------------------------------------
def curves(records: Sequence[dict[str, Any]], model: str,
           problems: set[str] | None = None) -> list[dict[str, Any]]:
    """Mean FLOPs, tokens, wall time and accuracy per configuration of one model."""
    acc: dict[str, list] = defaultdict(list)
    meta: dict[str, dict] = {}
    for r in records:
        if r["model"] != model or (problems is not None and r["problem_id"] not in problems):
            continue
        acc[r["config"]].append((r["flops"], r["tokens"], r["wall_s"], float(r["correct"]),
                                 float(r.get("latency_s", r["wall_s"])), float(r.get("depth") or 1),
                                 r.get("samples_used")))
        meta[r["config"]] = r
    out = []
    for c, rows in acc.items():
        a = np.array([row[:6] for row in rows], dtype=float)
        used = [row[6] for row in rows if row[6] is not None]
        m = meta[c]
        out.append({"config": c, "strategy": m["strategy"], "params": m["params"],
                    "setting": m.get("setting", ""),
                    "budget": m["budget"], "oracle": bool(m.get("oracle")), "n": len(rows),
                    "flops": float(a[:, 0].mean()), "tokens": float(a[:, 1].mean()),
                    "wall_s": float(a[:, 2].mean()), "accuracy": float(a[:, 3].mean()),
                    "latency_s": float(a[:, 4].mean()), "depth": float(a[:, 5].mean()),
                    "samples_used": float(np.mean(used)) if used else None})
    return sorted(out, key=lambda d: (d["strategy"], d["flops"]))


def frontier(points: Sequence[dict[str, Any]], by: str = "flops") -> list[dict[str, Any]]:
    """Compute-optimal frontier: the configurations no cheaper one matches in accuracy;
    cheaper in FLOPs (`by="flops"`) or in wall time per problem (`by="latency_s"`)."""
    out: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda d: (d[by], -d["accuracy"])):
        if not out or p["accuracy"] > out[-1]["accuracy"] + 1e-12:
            row = {"flops": p["flops"], "accuracy": p["accuracy"], "config": p["config"]}
            if by != "flops":
                row.update({by: p[by], "depth": p.get("depth")})
            out.append(row)
    return out


def latency_headline(records: Sequence[dict[str, Any]], model: str, folds: int = 5) -> dict[str, Any] | None:
    """Accuracy of the best configuration within 2x and within 10x greedy decoding's wall
    time per problem, the configuration chosen on other problems (K folds) and scored on
    held-out ones. Wall times: measured for strategies run for real, estimated from the
    measured draw for rules read from the sample store (`SampleSet.latency`)."""
    probs, configs, acc, lat = problem_matrix(records, model, field="latency_s")
    if "greedy()" not in configs:
        return None
    g = configs.index("greedy()")
    out: dict[str, Any] = {"greedy_wall_s": float(lat[:, g].mean()),
                           "greedy_accuracy": float(acc[:, g].mean()), "num_problems": len(probs)}
    for mult in (2, 10):
        cv = cv_choose(probs, acc, lat, lambda train, m=mult: m * float(lat[train, g].mean()), k=folds)
        picked = [configs[j] for j in cv["choices"] if j is not None]
        out[f"within_{mult}x"] = {"accuracy": cv["accuracy"], "wall_s": cv["cost"],
                                  "config": max(picked, key=picked.count) if picked else None}
    return out


def coverage_curve(samples: Sequence[dict[str, Any]], model: str) -> list[dict[str, float]]:
    stores = [s for s in samples if s["model"] == model]
    if not stores:
        return []
    n = min(len(s["set"]["correct"]) for s in stores)
    return [{"k": k, "coverage": float(np.mean([pass_at_k(n, sum(s["set"]["correct"][:n]), k)
                                                 for s in stores]))} for k in range(1, n + 1)]


def _loo(fitter, x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    e = leave_one_out(fitter, x, y)
    return {"loo_rmse": e["rmse"], "loo_r2": e["r2"], "loo_points": e["points"]}


def fit_all(points: Sequence[dict[str, Any]], coverage: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Per strategy: the saturating power law of accuracy against FLOPs (alpha, N*, R²);
    best-of-N error against N; coverage against k. Each fit also reports its
    leave-one-budget-out error (`loo_rmse`, `loo_r2`): in-sample R² of 3 parameters on 4-5
    points says little."""
    by: dict[str, list] = defaultdict(list)
    for p in points:  # one curve per strategy and sampler setting: "majority[temperature=1.0]"
        if p["strategy"] != "pass_at_k":
            by[p["strategy"] + (f"[{p['setting']}]" if p.get("setting") else "")].append(p)
    fits: dict[str, Any] = {}
    for s, ps in sorted(by.items()):
        f = fit_power_law([p["flops"] for p in ps], [p["accuracy"] for p in ps])
        fits[s] = {"law": "acc(C) = a_max - b*(C/C0)^(-alpha)", "alpha": f.params.get("alpha"),
                   "n_star": f.params.get("n_star"), "a_max": f.params.get("a_max"),
                   "r2": f.r2, "points": f.n_points, "error": f.error,
                   **_loo(fit_power_law, [p["flops"] for p in ps], [p["accuracy"] for p in ps])}
    bon = by.get("best_of_n", [])
    if bon:
        f = fit_bon_error([p["budget"] for p in bon], [1 - p["accuracy"] for p in bon])
        fits.setdefault("best_of_n", {})["error_vs_n"] = {
            "law": "err(N) = e_inf + A*exp(-c*N)", **f.params, "r2": f.r2, "error": f.error,
            **_loo(fit_bon_error, [p["budget"] for p in bon], [1 - p["accuracy"] for p in bon])}
    if coverage:
        f = fit_coverage([c["k"] for c in coverage], [c["coverage"] for c in coverage])
        fits["pass_at_k"] = {"law": "cov(k) = exp(a*k^b)", **f.params, "r2": f.r2,
                             "error": f.error, "alpha": None, "n_star": None,
                             **_loo(fit_coverage, [c["k"] for c in coverage],
                                    [c["coverage"] for c in coverage])}
    return fits


# -- headline numbers --------------------------------------------------------------------------
def n_at_accuracy(curve: Sequence[dict[str, Any]], target: float) -> float:
    """The n at which a fixed-N rule's curve (points sorted by budget) first reaches `target`:
    log-linear interpolation between measured n; the largest n when it never gets there, which
    understates a saving against it (the rule is then compared with the most it could cost)."""
    n_eq = curve[-1]["budget"]
    for a, b in zip([None] + list(curve[:-1]), curve):
        if b["accuracy"] >= target - 1e-12:
            if a is None or a["accuracy"] >= target:
                n_eq = b["budget"]
            else:
                t = (target - a["accuracy"]) / (b["accuracy"] - a["accuracy"])
                lo, hi = math.log(a["budget"]), math.log(b["budget"])
                n_eq = math.exp(lo + t * (hi - lo))
            break
    return float(n_eq)


def _fixed_curve(points: Sequence[dict[str, Any]], rule: str, setting: str) -> list[dict[str, Any]]:
    return sorted((p for p in points if p.get("setting", "") == setting and p["strategy"] == rule),
                  key=lambda p: p["budget"])


def adaptive_saving(points: Sequence[dict[str, Any]], rule: str = "adaptive_consistency",
                    setting: str = "") -> dict[str, Any]:
    """Samples a stopping rule saves against fixed-N majority voting at equal accuracy, signed:
    1 - (rule's mean samples) / N_eq, negative when the rule needs more samples than
    majority voting does for the same accuracy (N_eq: `n_at_accuracy`).
    Both are read at one sampler `setting` ("" is the grid's base setting)."""
    maj = _fixed_curve(points, "majority", setting)
    rul = _fixed_curve(points, rule, setting)
    if not maj or not rul:
        return {"saving": None}
    r = rul[-1]
    target = r["accuracy"]
    n_eq = n_at_accuracy(maj, target)
    used = r["samples_used"] or r["budget"]
    return {"rule": r["config"], "accuracy": target, "mean_samples": used,
            "majority_n_at_equal_accuracy": n_eq, "majority_max": maj[-1]["config"],
            "majority_max_accuracy": maj[-1]["accuracy"],
            "saving": (1.0 - used / n_eq) if n_eq else None,
            "saving_vs_max_n": 1.0 - used / r["budget"]}


def confident_saving(records: Sequence[dict[str, Any]], points: Sequence[dict[str, Any]],
                     model: str, setting: str = "", folds: int = 5, seed: int = 0,
                     target: str = "majority",
                     other_seeds: Sequence[int] = ()) -> dict[str, Any]:
    """`adaptive_saving` for confident consistency, whose confidence is chosen on other problems:
    per task and fold, the grid's confidence that reaches the accuracy of `target` voting
    (majority, or weighted_majority) at its largest n on the other folds with the fewest
    samples (`cv_cheapest`); accuracy and samples are those of the held-out folds. Beside the
    saving against majority voting (the papers' baseline), the saving against weighted majority
    voting, which reads the same scores. With `other_seeds`, `saving_by_fold_seed` holds the
    saving with `seed` and each of those assignments of problems to folds."""
    maj = _fixed_curve(points, "majority", setting)
    wmaj = _fixed_curve(points, "weighted_majority", setting)
    aim = _fixed_curve(points, target, setting)
    rule = "confident_consistency"
    keep = {p["config"] for p in points if p.get("setting", "") == setting
            and (p["strategy"] == rule or p["config"] == (aim[-1]["config"] if aim else None))}
    rows = [r for r in records if r["model"] == model and r["config"] in keep]
    probs, configs, acc, used = problem_matrix(rows, model, field="samples_used")
    ours = [j for j, c in enumerate(configs) if not aim or c != aim[-1]["config"]]
    if not maj or not aim or not ours or len(ours) == len(configs):
        return {"saving": None}
    m = configs.index(aim[-1]["config"])
    task_of = {r["problem_id"]: r["task"] for r in rows}
    groups = [task_of[p] for p in probs]

    def held_out(s: int) -> dict[str, Any]:
        return cv_cheapest(probs, acc[:, ours], used[:, ours],
                           lambda train: float(acc[train, m].mean()), groups=groups, k=folds,
                           seed=s)

    cv = held_out(seed)
    conf_of = {p["config"]: p["params"].get("confidence") for p in points}
    n_eq = n_at_accuracy(maj, cv["accuracy"])
    out = {"rule": rule, "accuracy": cv["accuracy"], "mean_samples": cv["cost"],
           "confidence_by_fold": {t: [conf_of[configs[ours[j]]] for j in js]
                                  for t, js in cv["choices"].items()},
           "majority_n_at_equal_accuracy": n_eq, "majority_max": maj[-1]["config"],
           "majority_max_accuracy": maj[-1]["accuracy"], "saving": 1.0 - cv["cost"] / n_eq,
           "saving_vs_max_n": 1.0 - cv["cost"] / maj[-1]["budget"], "folds": folds, "seed": seed}
    if wmaj:
        w_eq = n_at_accuracy(wmaj, cv["accuracy"])
        out.update(weighted_majority_n_at_equal_accuracy=w_eq,
                   saving_vs_weighted_majority=1.0 - cv["cost"] / w_eq)
    if other_seeds:  # the same matrix, other folds
        out["saving_by_fold_seed"] = [out["saving"]] + [
            1.0 - c["cost"] / n_at_accuracy(maj, c["accuracy"])
            for c in map(held_out, other_seeds)]
    return out


def model_sizes(results_dir: Path) -> dict[str, int]:
    p = results_dir / MODELS_FILE
    return {m: d["n_params"] for m, d in json.loads(p.read_text()).items()} if p.exists() else {}


def _small_vs_large_on(records: Sequence[dict[str, Any]], small: str, large: str,
                       probs: set[str], folds: int) -> dict[str, Any] | None:
    """The comparison on the problems `probs`: the small model's configuration is chosen on
    the other folds (best accuracy within the large greedy's FLOPs there), scored on the fold."""
    lp, lc, lacc, lflops = problem_matrix(records, large, probs)
    if "greedy()" not in lc:
        return None
    g = lc.index("greedy()")
    sp, sc, sacc, sflops = problem_matrix(records, small, set(lp))
    if not sp or sp != lp:
        return None
    large_flops = lflops[:, g]
    cv = cv_choose(sp, sacc, sflops, lambda train: float(large_flops[train].mean()), k=folds)
    picked = [sc[j] for j in cv["choices"] if j is not None]
    greedy_small = sc.index("greedy()") if "greedy()" in sc else None
    return {"small_config": max(picked, key=picked.count) if picked else None,
            "small_configs_by_fold": [sc[j] if j is not None else None for j in cv["choices"]],
            "small_accuracy": cv["accuracy"], "small_flops": cv["cost"],
            "small_greedy_accuracy": float(sacc[:, greedy_small].mean()) if greedy_small is not None else None,
            "large_accuracy": float(lacc[:, g].mean()), "large_flops": float(large_flops.mean()),
            "num_problems": len(sp)}


def small_vs_large(records: Sequence[dict[str, Any]], sizes: dict[str, int],
                   grid: str, folds: int = 5) -> dict[str, Any] | None:
    """The smallest model's search against the largest model's greedy decoding, on the same
    problems, at no more FLOPs. The small model's configuration is chosen on other problems
    (K folds) and scored on held-out ones, overall and per level (`per_level`)."""
    models = sorted({r["model"] for r in records}, key=lambda m: sizes.get(m, 0))
    if len(models) < 2:
        return None
    small, large = models[0], models[-1]
    probs = {r["problem_id"] for r in records if r["model"] == large}
    out = _small_vs_large_on(records, small, large, probs, folds)
    if out is None:
        return None
    level_of = {r["problem_id"]: r.get("level") for r in records if r["model"] == large}
    per_level = []
    for lv in sorted({v for v in level_of.values() if v is not None}):
        row = _small_vs_large_on(records, small, large, {p for p, v in level_of.items() if v == lv}, folds)
        if row is not None:
            per_level.append({"level": lv, **row})
    return {"small_model": small, "large_model": large,
            "small_params": sizes.get(small), "large_params": sizes.get(large), **out,
            "per_level": per_level}


def analyze(results_dir: str | Path, folds: int = 5) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict."""
    results_dir = Path(results_dir)
    records = load_results(results_dir)
    if not records:
        raise TTScaleError(f"{results_dir}/results.jsonl holds no records yet")
    records, side = split_side(records)
    samples = load_samples(results_dir)
    model = grid_model(records)
    points = curves(records, model)
    deployable = [p for p in points if not p["oracle"]]
    cov = coverage_curve(samples, model)
    out: dict[str, Any] = {"results_dir": str(results_dir), "model": model,
                           "num_records": len(records),
                           "num_problems": len({r["problem_id"] for r in records if r["model"] == model}),
                           "curves": points, "frontier": frontier(deployable),
                           "latency_frontier": frontier(deployable, "latency_s"),
                           "coverage": cov, "fits": fit_all(points, cov)}
    # adaptive stopping: confident consistency (its confidence chosen on other problems) where
    # the grid has it, else Adaptive-Consistency; the other rules beside it
    # (and how much it moves with the assignment of problems to folds)
    confident = confident_saving(records, points, model, folds=folds, other_seeds=(1, 2, 3))
    headline: dict[str, Any] = {"adaptive_consistency": adaptive_saving(points),
                                "esc": adaptive_saving(points, "esc")}
    headline["adaptive_stopping"] = (confident if confident["saving"] is not None
                                     else headline["adaptive_consistency"])
    headline["adaptive_stopping_saving"] = headline["adaptive_stopping"]["saving"]
    # the same at every other sampler setting of the grid, shown beside the base setting's
    # headline figure (never picked from them: that would select on the scored problems)
    others = sorted({p.get("setting", "") for p in points} - {""})
    if others:
        headline["adaptive_stopping_by_setting"] = {
            st: {"adaptive_consistency": adaptive_saving(points, setting=st)["saving"],
                 "esc": adaptive_saving(points, "esc", setting=st)["saving"],
                 "confident_consistency": confident_saving(records, points, model, st,
                                                           folds)["saving"]}
            for st in others}
    sizes = model_sizes(results_dir)
    headline["small_search_vs_large_greedy"] = small_vs_large(records, sizes, model)
    headline["latency"] = latency_headline(records, model, folds)
    if samples:
        table = build_table(records, samples, model)
        plan = fit_plan(table, sampling=_sampling_of(results_dir))
        plan.save(results_dir / PLAN_FILE)
        fixed = fixed_points(table)
        budgets = sorted(set(budget_grid(table) + [p.flops for p in fixed]))
        curve = cross_validate(table, budgets, k=folds)
        # the reference chosen on other problems, as the plan is: both sides held out
        headline["planner_vs_best_fixed"] = planner_headline(
            curve, [held_out_reference(table, k=folds)])
        # how much it moves with the assignment of problems to folds (both sides re-drawn)
        headline["planner_vs_best_fixed"]["flops_saving_by_fold_seed"] = [
            headline["planner_vs_best_fixed"]["flops_saving"]] + [
            planner_headline(cross_validate(table, budgets, k=folds, seed=s),
                             [held_out_reference(table, k=folds, seed=s)])["flops_saving"]
            for s in (1, 2, 3)]
        # beside it, the reference chosen with hindsight on the scored problems
        headline["planner_vs_best_fixed_hindsight"] = planner_headline(curve, fixed)
        if len(set(table.tasks)) > 1:  # what planning gains beyond one configuration per task
            headline["planner_vs_best_fixed_per_task"] = planner_headline(
                curve, [held_out_reference(table, k=folds, per_task=True)])
            headline["planner_vs_best_fixed_per_task_hindsight"] = planner_headline(
                curve, per_task_fixed_points(table))
        svl = headline.get("small_search_vs_large_greedy")
        if svl:  # the small model's planner given the large model's greedy FLOPs, held out
            levels = np.array(table.levels)
            for row, sub in [(svl, table)] + [(r, table.subset(levels == r["level"]))
                                              for r in svl["per_level"]]:
                [at] = cross_validate(sub, [row["large_flops"]], k=folds)
                row["planner"] = {"accuracy": at.accuracy, "flops": at.flops, "budget": at.budget}
        out["planner_curve"] = [c.__dict__ for c in curve]
        out["plan"] = {"path": str(results_dir / PLAN_FILE), "edges": plan.edges,
                       "probe_cost": plan.probe_cost, "bins": plan.calibration["bin_sizes"],
                       "recommendations": recommendations(plan, points)}
        out["bins"] = bin_curves(table, plan)
    else:
        headline["planner_vs_best_fixed"] = {"accuracy_gain": None, "flops_saving": None}
    checked = side_rows(side, records, model)
    if checked:
        out["side"] = checked
        headline["with_checker"] = {k: v for k, v in checked.items() if k != "rows"}
    out["headline"] = headline
    return out


def side_rows(side: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
              model: str) -> dict[str, Any] | None:
    """Records scored by a side scorer (the checker), shown beside the headline: each
    configuration against the same rule with the learned scorer and against greedy decoding,
    on the same problems (those the side scorer can check)."""
    side = [r for r in side if r["model"] == model]
    if not side:
        return None
    probs = {r["problem_id"] for r in side}
    learned = {p["config"]: p for p in curves(records, model, probs)}
    rows = []
    for p in curves(side, model):
        twin = learned.get(config_id(p["strategy"], {k: v for k, v in p["params"].items() if k != "scorer"}))
        rows.append({"config": p["config"], "accuracy": p["accuracy"], "flops": p["flops"],
                     "learned_accuracy": twin["accuracy"] if twin else None})
    best = max(rows, key=lambda r: (r["accuracy"], -r["flops"]))
    greedy = learned.get("greedy()")
    return {"scorer": side[0]["side_scorer"], "num_problems": len(probs),
            "tasks": sorted({r["task"] for r in side}),
            "greedy_accuracy": greedy["accuracy"] if greedy else None,
            "greedy_flops": greedy["flops"] if greedy else None,
            "best": best, "rows": rows}


def make_plan(results_dir: str | Path, model: str | None = None,
              path: str | Path | None = None, latency_budget: float | None = None) -> tuple[Any, Path]:
    """Fit the plan on every problem of a sweep and save it (default DIR/plan.json); with
    `latency_budget` (seconds per problem) only configurations within it are planned with."""
    from ttscale.planner.plan import Plan  # noqa: F401  (the type returned)

    results_dir = Path(results_dir)
    table = build_table(split_side(load_results(results_dir))[0], load_samples(results_dir), model)
    plan = fit_plan(table, sampling=_sampling_of(results_dir), latency_budget=latency_budget)
    return plan, plan.save(path or results_dir / PLAN_FILE)


def _sampling_of(results_dir: Path) -> dict[str, Any]:
    from ttscale.eval.sweep import load_config

    cfg = load_config(results_dir)
    return cfg.sampling if cfg else {}


def bin_curves(table, plan) -> list[dict[str, Any]]:
    """Accuracy and FLOPs of every configuration within each difficulty bin."""
    bins = np.array([plan.bin_of(d) for d in table.difficulty])
    out = []
    for b in range(len(plan.bins)):
        m = bins == b
        if not m.any():
            continue
        out.append({"bin": b, "instances": int(m.sum()),
                    "difficulty": [float(table.difficulty[m].min()), float(table.difficulty[m].max())],
                    "points": [{"config": c, "strategy": table.strategies[c]["strategy"],
                                "flops": float(table.raw[m, j].mean()),
                                "accuracy": float(table.acc[m, j].mean())}
                               for j, c in enumerate(table.configs)]})
    return out


def recommendations(plan, points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Budget -> recommended configuration (difficulty-blind and per bin), at three budgets:
    low = the cheapest configuration's FLOPs, high = the most expensive one's, medium = their
    geometric mean."""
    dep = [p for p in points if not p["oracle"]]
    if not dep:
        return []
    costs = sorted(p["flops"] for p in dep)
    levels = [("low", costs[0]), ("medium", math.sqrt(costs[0] * costs[-1])), ("high", costs[-1])]
    rows = []
    for (name, b), (_, seed) in zip(levels, SEED_TABLE):
        blind = [o for o in plan.blind if o.cost <= b][-1]
        per_bin = [plan.choose(lo, b) for lo in _bin_representatives(plan)]
        rows.append({"budget": name, "flops": b, "measured": blind.config,
                     "measured_accuracy": blind.accuracy, "per_bin": per_bin, "seed": seed})
    return rows


def _bin_representatives(plan) -> list[float]:
    """A difficulty inside each bin: 0 for the first, each lower edge for the others."""
    return ([0.0] + list(plan.edges))[: len(plan.bins)]


# -- the report --------------------------------------------------------------------------------
def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def render_markdown(a: dict[str, Any], plots: dict[str, str]) -> str:
    h = a["headline"]
    lines = [f"# Sweep report: {a['model']}", "",
             f"{a['num_problems']} problems, {a['num_records']} records, from `{a['results_dir']}`.", ""]
    if "accuracy" in plots:
        lines += [f"![accuracy against FLOPs]({plots['accuracy']})", ""]
    lines += ["## Compute-optimal frontier", "", "| FLOPs/problem | accuracy | configuration |",
              "|---:|---:|---|"]
    lines += [f"| {p['flops']:.3g} | {_fmt(p['accuracy'], True)} | {p['config']} |" for p in a["frontier"]]
    lines += ["", "## Accuracy against latency", "",
              "Wall seconds per problem on the engine at the batch each configuration ran "
              "(measured for strategies run for real; for rules read from the sample store, the "
              "measured draw scaled to the rounds and samples they use); depth = dependent "
              "generation rounds.", "",
              "| wall s/problem | depth | accuracy | FLOPs/problem | configuration |",
              "|---:|---:|---:|---:|---|"]
    lines += [f"| {p['latency_s']:.3g} | {_fmt(p.get('depth'))} | {_fmt(p['accuracy'], True)} | "
              f"{p['flops']:.3g} | {p['config']} |" for p in a.get("latency_frontier", [])]
    if "latency" in plots:
        lines += ["", f"![accuracy against latency]({plots['latency']})"]
    lines += ["", "## Fitted laws", "",
              "Accuracy against FLOPs per strategy: acc(C) = a_max - b·(C/C0)^(-alpha); N* is the "
              "budget past which a doubling of compute gains less than 1 point.", "",
              "R² is in-sample; the leave-one-budget-out RMSE (each budget predicted by the law "
              "fitted on the others) is the out-of-sample error.", "",
              "| strategy | alpha | a_max | N* (FLOPs) | R² | leave-one-out RMSE | note |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for s, f in a["fits"].items():
        if s == "pass_at_k":
            continue
        lines.append(f"| {s} | {_fmt(f.get('alpha'))} | {_fmt(f.get('a_max'))} | "
                     f"{_fmt(f.get('n_star'))} | {_fmt(f.get('r2'))} | {_fmt(f.get('loo_rmse'))} | "
                     f"{f.get('error') or ''} |")
    bon = a["fits"].get("best_of_n", {}).get("error_vs_n")
    if bon:
        lines += ["", f"Best-of-N error: err(N) = e_inf + A·exp(-cN): c = {_fmt(bon.get('c'))}, "
                  f"e_inf = {_fmt(bon.get('e_inf'))}, R² = {_fmt(bon.get('r2'))} {bon.get('error') or ''}"]
    cov = a["fits"].get("pass_at_k")
    if cov:
        lines += [f"Coverage: pass@k = exp(a·k^b): a = {_fmt(cov.get('a'))}, b = {_fmt(cov.get('b'))}, "
                  f"R² = {_fmt(cov.get('r2'))} {cov.get('error') or ''}"]
        if "coverage" in plots:
            lines += ["", f"![coverage]({plots['coverage']})"]
    plan = a.get("plan")
    if plan:
        lines += ["", "## Budget -> recommended strategy", "",
                  f"Plan: `{plan['path']}`; probe {_fmt(plan['probe_cost'])} FLOPs; difficulty bin "
                  f"edges {plan['edges']} (instances per bin {plan['bins']}).", "",
                  "| budget | FLOPs/problem | measured best (no probe) | accuracy | per difficulty bin (easy -> hard) | seed's recommendation |",
                  "|---|---:|---|---:|---|---|"]
        for r in plan["recommendations"]:
            lines.append(f"| {r['budget']} | {r['flops']:.3g} | {r['measured']} | "
                         f"{_fmt(r['measured_accuracy'], True)} | {', '.join(r['per_bin'])} | {r['seed']} |")
        if "bins" in plots:
            lines += ["", f"![per difficulty bin]({plots['bins']})"]
    lines += ["", "## Headline numbers (held-out problems)", ""]
    p = h.get("planner_vs_best_fixed") or {}
    if p.get("reference"):
        lines += [f"- Planner vs best fixed configuration ({p['reference']['config']}, "
                  f"{_fmt(p['reference']['accuracy'], True)} at {p['reference']['flops']:.3g} FLOPs): "
                  f"accuracy gain {_fmt(p.get('accuracy_gain'), True)} at matched FLOPs; FLOPs saving "
                  f"to match it {_fmt(p.get('flops_saving'))}x (cross-validated: each problem is "
                  "scored by a plan, and by a fixed configuration, chosen on other problems)."]
        if p.get("flops_saving_by_fold_seed"):
            lines += ["  With other assignments of problems to folds (seeds 0-3): FLOPs saving "
                      + " / ".join(f"{_fmt(x)}x" for x in p["flops_saving_by_fold_seed"]) + "."]
    for key, against, why in (
            ("planner_vs_best_fixed_per_task", "Against one configuration per task, chosen on "
             "other problems", " (what difficulty bins add to choosing per task)"),
            ("planner_vs_best_fixed_hindsight", "With the fixed configuration chosen with "
             "hindsight on the scored problems", "")):
        q = h.get(key) or {}
        if q.get("reference"):
            lines += [f"  {against} ({q['reference']['config']}, "
                      f"{_fmt(q['reference']['accuracy'], True)} at {q['reference']['flops']:.3g} "
                      f"FLOPs): accuracy gain {_fmt(q.get('accuracy_gain'), True)}, FLOPs saving "
                      f"{_fmt(q.get('flops_saving'))}x{why}."]
    s = h.get("small_search_vs_large_greedy")
    if s:
        lines += [f"- {s['small_model']} ({_fmt(s['small_params'])} params) with "
                  f"{s['small_config']}: {_fmt(s['small_accuracy'], True)} at {_fmt(s['small_flops'])} "
                  f"FLOPs, against {s['large_model']} ({_fmt(s['large_params'])} params) greedy: "
                  f"{_fmt(s['large_accuracy'], True)} at {_fmt(s['large_flops'])} FLOPs "
                  f"({s['num_problems']} problems; {s['small_model']} greedy: "
                  f"{_fmt(s['small_greedy_accuracy'], True)}; the small model's configuration is "
                  "chosen on other problems, 5 folds)."]
        if s.get("planner"):
            lines.append(f"  - {s['small_model']}'s planner (cross-validated), given "
                         f"{s['large_model']}'s greedy FLOPs per problem: "
                         f"{_fmt(s['planner']['accuracy'], True)} at {_fmt(s['planner']['flops'])} "
                         "FLOPs")
        for row in s.get("per_level") or []:
            planned = (f"; planner {_fmt(row['planner']['accuracy'], True)} at "
                       f"{_fmt(row['planner']['flops'])} FLOPs" if row.get("planner") else "")
            lines.append(f"  - level {row['level']}: {_fmt(row['small_accuracy'], True)} at "
                         f"{_fmt(row['small_flops'])} FLOPs ({row['small_config']}){planned} "
                         f"against {_fmt(row['large_accuracy'], True)} at "
                         f"{_fmt(row['large_flops'])} FLOPs")
    lat = h.get("latency")
    if lat:
        lines += [f"- Latency: greedy decoding takes {_fmt(lat['greedy_wall_s'])} s per problem "
                  f"({_fmt(lat['greedy_accuracy'], True)}); the best configuration within 2x its "
                  f"wall time: {_fmt(lat['within_2x']['accuracy'], True)} "
                  f"({lat['within_2x']['config']}); within 10x: "
                  f"{_fmt(lat['within_10x']['accuracy'], True)} ({lat['within_10x']['config']}) "
                  "(chosen on other problems, 5 folds)."]
    ad = h.get("adaptive_stopping") or {}
    if ad.get("saving") is not None:
        how = (f", its confidence chosen per task on other problems ({ad['folds']} folds)"
               if "confidence_by_fold" in ad else "")
        lines += [f"- Adaptive stopping ({ad['rule']}{how}): {_fmt(ad['accuracy'], True)} with "
                  f"{ad['mean_samples']:.2f} samples on average; majority voting needs "
                  f"{ad['majority_n_at_equal_accuracy']:.2f} samples for that accuracy: "
                  f"{_fmt(ad['saving'], True)} of samples saved (signed: negative when it needs "
                  f"more; {_fmt(ad['saving_vs_max_n'], True)} "
                  f"against {ad['majority_max']}, which reaches {_fmt(ad['majority_max_accuracy'], True)})."]
        if ad.get("saving_by_fold_seed"):
            lines += ["  With other assignments of problems to folds (seeds 0-3): "
                      + " / ".join(_fmt(x, True) for x in ad["saving_by_fold_seed"]) + "."]
        if ad.get("saving_vs_weighted_majority") is not None:
            lines += [f"  Against weighted majority voting, which reads the same scores: it needs "
                      f"{ad['weighted_majority_n_at_equal_accuracy']:.2f} samples for that "
                      f"accuracy, a saving of {_fmt(ad['saving_vs_weighted_majority'], True)}."]
        for name in ("adaptive_consistency", "esc"):
            o = h.get(name) or {}
            if o.get("saving") is not None and o.get("rule") != ad.get("rule"):
                lines += [f"  {o['rule']}: {_fmt(o['accuracy'], True)} with "
                          f"{o['mean_samples']:.2f} samples, {_fmt(o['saving'], True)} saved "
                          "against majority voting."]
    ck = h.get("with_checker")
    if ck:
        b = ck["best"]
        lines += [f"- Beside the headline, not in it: with the {ck['scorer']} (checks an answer from the "
                  f"problem alone, no model FLOPs; {', '.join(ck['tasks'])}, {ck['num_problems']} problems) "
                  f"{b['config']} reaches {_fmt(b['accuracy'], True)} at {b['flops']:.3g} FLOPs; the same "
                  f"rule with the learned scorer {_fmt(b['learned_accuracy'], True)}, greedy decoding "
                  f"{_fmt(ck['greedy_accuracy'], True)} on these problems."]
    return "\n".join(lines) + "\n"


def write_report(results_dir: str | Path, analysis: dict[str, Any] | None = None) -> Path:
    """Write report.md and its PNG plots into `results_dir`; returns the report's path."""
    from ttscale.eval.plots import plot_all

    results_dir = Path(results_dir)
    a = analysis or analyze(results_dir)
    plots = plot_all(a, results_dir)
    path = results_dir / REPORT_FILE
    path.write_text(render_markdown(a, plots))
    (results_dir / "analysis.json").write_text(json.dumps(a, indent=1, default=float))
    return path
