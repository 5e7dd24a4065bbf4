"""Compute-optimal planning: scaling-law fits, difficulty from a probe, budget -> strategy.

- `fits`: saturating power law of accuracy against FLOPs (alpha, N*), best-of-N error against
  N, coverage against k, each with R².
- `difficulty`: agreement of the first k samples (no answer key), quantile bins.
- `plan`: `build_table` (a sweep's records as instances x configurations), `fit_plan`,
  `Plan` (save/load JSON), `simulate` and `cross_validate` (held-out evaluation).
- `allocate`: frontiers, allocation by marginal gain per FLOP, `BudgetGuard`.
- `solve`: `solve_with_plan` answers a batch within a FLOP budget that is never exceeded.
"""
from ttscale.planner.allocate import BudgetExhausted, BudgetGuard, Option, allocate, efficient_frontier
from ttscale.planner.fits import Fit, fit_bon_error, fit_coverage, fit_power_law
from ttscale.planner.plan import Plan, Table, build_table, cross_validate, fit_plan, simulate
from ttscale.planner.solve import PlannedRun, solve_with_plan

__all__ = ["BudgetExhausted", "BudgetGuard", "Fit", "Option", "Plan", "PlannedRun", "Table",
           "allocate", "build_table", "cross_validate", "efficient_frontier", "fit_bon_error",
           "fit_coverage", "fit_plan", "fit_power_law", "simulate",
           "solve_with_plan"]
