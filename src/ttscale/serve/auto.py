"""`"strategy": "auto"`: answer one request with the compute plan under its FLOP budget."""
from __future__ import annotations

from typing import Any

from ttscale.serve.work import Planner


def plan_runner(path: str, seed: int = 0) -> Planner:
    """A planner for the server from a plan file made by `ttscale plan` (loaded once, now)."""
    from ttscale.planner.plan import Plan
    from ttscale.planner.solve import solve_with_plan

    plan = Plan.load(path)

    def run(problem: Any, task: Any, generator: Any, scorer: Any, budget: float) -> dict:
        result = solve_with_plan([problem], task, generator, plan, budget, scorer, seed=seed)
        a = result.answers[0]
        return {"answer": a.answer, "config": a.config, "difficulty": a.difficulty,
                "flops": a.flops, "mode": result.mode}

    return run
