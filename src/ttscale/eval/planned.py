"""`ttscale solve --plan FILE --budget FLOPS`: load a plan, a model and problems, and answer them
with `planner.solve.solve_with_plan`. Loading lives here, in the experiment layer, so that the
planner never imports the experiment runner (`eval.sweep`)."""
from __future__ import annotations

from typing import Any

from ttscale.eval.sweep import make_generator
from ttscale.planner.plan import Plan
from ttscale.planner.solve import solve_with_plan


def run_planned(model: str, plan_file: str, budget: float, task: str = "arith",
                level: int | None = None, num_problems: int = 10, split: str = "test",
                problem_seed: int = 0, scorer: str | None = None, scorer_model: str | None = None,
                backend: str = "torch", generator_options: dict[str, Any] | None = None,
                seed: int = 0, latency_budget: float | None = None) -> dict[str, Any]:
    """`ttscale solve --plan FILE --budget FLOPS`: load the plan, the model and the problems,
    spend at most `budget` FLOPs in all, and report per problem what was chosen and spent.
    With `latency_budget` (seconds per problem) only configurations expected to answer
    within it are chosen (`Plan.with_latency_budget`)."""
    from ttscale.rewards import get_scorer
    from ttscale.tasks import BuiltinTask, get_task

    plan = Plan.load(plan_file)
    if latency_budget is not None:
        plan = plan.with_latency_budget(latency_budget)
    t = get_task(task)
    if isinstance(t, BuiltinTask):
        problems = t.problems(split, level or 3, num_problems, problem_seed)
    else:
        problems = t.problems(split, None, num_problems, problem_seed)
    gen = make_generator(model, backend, **(generator_options or {}))
    needs = any(v["strategy"] not in ("majority", "esc", "adaptive_consistency", "greedy")
                for v in plan.strategies.values())
    sc = get_scorer(scorer or "likelihood", task=t, generator=gen, model=scorer_model) \
        if needs or scorer else None
    run = solve_with_plan(problems, t, gen, plan, budget, sc, seed)
    return {"plan": str(plan_file), "model": model, "task": task,
            "latency_budget": latency_budget, **run.to_dict()}
