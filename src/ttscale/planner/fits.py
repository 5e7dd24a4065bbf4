"""Scaling-law fits of measured curves (scipy.optimize.curve_fit), each with its R².

Forms (C is compute in FLOPs per problem, N and k are sample counts):

- accuracy against compute, a saturating power law::

      acc(C) = a_max - b · (C / C0) ** (-alpha)        C0 = the smallest measured C

  `alpha` is the scaling exponent; accuracy rises as a power of compute and flattens at
  `a_max`. The saturation budget N* is where one more doubling of compute gains less than
  `threshold` (default 0.01, one percentage point):
  b · (N*/C0)^(-alpha) · (1 - 2^(-alpha)) = threshold.
- best-of-N error against N, exponential decay with an asymptote::

      err(N) = e_inf + A · exp(-c · N)
- coverage (pass@k) against k, as in Brown et al. (2024)::

      cov(k) = exp(a · k ** b)            a < 0, b < 0
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

DOUBLING_GAIN_THRESHOLD = 0.01  # N*: a doubling of compute gains less than one point


@dataclass
class Fit:
    """A fitted law: its name, parameters, R² on the points, and why it failed if it did."""

    law: str
    params: dict[str, float] = field(default_factory=dict)
    r2: float | None = None
    n_points: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    ss_res = float(np.sum((y - y_hat) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res < 1e-12 else 0.0
    return 1.0 - ss_res / ss_tot


def _prepare(x: Sequence[float], y: Sequence[float], min_points: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya) & (xa > 0)
    xa, ya = xa[keep], ya[keep]
    order = np.argsort(xa)
    xa, ya = xa[order], ya[order]
    if len(np.unique(xa)) < min_points:
        return xa, ya, f"needs at least {min_points} distinct points, got {len(np.unique(xa))}"
    return xa, ya, None


def _curve_fit(f, x, y, p0, bounds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        popt, _ = curve_fit(f, x, y, p0=p0, bounds=bounds, maxfev=20000)
    return popt


# -- accuracy against compute ---------------------------------------------------------------
def power_law(c: np.ndarray, a_max: float, b: float, alpha: float, c0: float = 1.0) -> np.ndarray:
    return a_max - b * (np.asarray(c, dtype=float) / c0) ** (-alpha)


def saturation_budget(b: float, alpha: float, c0: float,
                      threshold: float = DOUBLING_GAIN_THRESHOLD) -> float:
    """N*: the compute past which one doubling gains less than `threshold` accuracy."""
    gain_at_c0 = b * (1.0 - 2.0 ** (-alpha))
    if gain_at_c0 <= threshold or alpha <= 0:
        return c0
    return c0 * (gain_at_c0 / threshold) ** (1.0 / alpha)


def fit_power_law(flops: Sequence[float], accuracy: Sequence[float],
                  threshold: float = DOUBLING_GAIN_THRESHOLD) -> Fit:
    """Fit acc(C) = a_max - b·(C/C0)^(-alpha); report alpha, a_max, b, C0 and N* (`n_star`)."""
    x, y, err = _prepare(flops, accuracy, 3)
    if err:
        return Fit("power_law", n_points=len(x), error=err)
    if float(y.max() - y.min()) < 1e-9:
        return Fit("power_law", n_points=len(x), error="accuracy does not change with compute")
    c0 = float(x[0])
    best: tuple[float, np.ndarray] | None = None
    for alpha0 in (0.1, 0.5, 1.5):  # a few starts: the loss surface is not convex in alpha
        try:
            b0 = max(float(y[-1] - y[0]), 1e-3) / max(1 - (x[-1] / c0) ** -alpha0, 1e-3)
            p0 = [min(max(float(y.max()), 1e-3), 1.0), min(b0, 10.0), alpha0]
            popt = _curve_fit(lambda c, a, b, al: power_law(c, a, b, al, c0), x, y, p0,
                              ([0.0, 0.0, 1e-4], [1.0, 10.0, 5.0]))
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((power_law(x, *popt, c0) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, popt)
    if best is None:
        return Fit("power_law", n_points=len(x), error="curve_fit did not converge")
    a_max, b, alpha = (float(v) for v in best[1])
    r2 = r_squared(y, power_law(x, a_max, b, alpha, c0))
    return Fit("power_law", {"a_max": a_max, "b": b, "alpha": alpha, "c0": c0,
                             "n_star": saturation_budget(b, alpha, c0, threshold),
                             "threshold": threshold}, r2, len(x))


# -- best-of-N error against N ---------------------------------------------------------------
def exp_decay(n: np.ndarray, e_inf: float, amp: float, c: float) -> np.ndarray:
    return e_inf + amp * np.exp(-c * np.asarray(n, dtype=float))


def fit_bon_error(ns: Sequence[float], error: Sequence[float]) -> Fit:
    """Fit err(N) = e_inf + A·exp(-c·N) to best-of-N error rates; report c, e_inf, A."""
    x, y, err = _prepare(ns, error, 3)
    if err:
        return Fit("exp_decay", n_points=len(x), error=err)
    best = None
    for c0 in (0.05, 0.3, 1.0):
        p0 = [float(y.min()) * 0.9, max(float(y[0] - y.min()), 1e-3) * math.exp(c0 * x[0]), c0]
        try:
            popt = _curve_fit(exp_decay, x, y, p0, ([0.0, 0.0, 1e-5], [1.0, 1e3, 10.0]))
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((exp_decay(x, *popt) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, popt)
    if best is None:
        return Fit("exp_decay", n_points=len(x), error="curve_fit did not converge")
    e_inf, amp, c = (float(v) for v in best[1])
    return Fit("exp_decay", {"c": c, "e_inf": e_inf, "amp": amp},
               r_squared(y, exp_decay(x, e_inf, amp, c)), len(x))


# -- coverage against k ----------------------------------------------------------------------
def coverage_law(k: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.exp(a * np.asarray(k, dtype=float) ** b)


def fit_coverage(ks: Sequence[float], coverage: Sequence[float]) -> Fit:
    """Fit pass@k = exp(a·k^b) (Brown et al. 2024); report a and b (both negative)."""
    x, y, err = _prepare(ks, coverage, 3)
    if err:
        return Fit("coverage", n_points=len(x), error=err)
    if np.any(y <= 0):
        return Fit("coverage", n_points=len(x), error="coverage is zero at some k; "
                   "exp(a·k^b) cannot reach zero")
    # Start from the log-log line: log(-log cov) = log(-a) + b·log k.
    yy = np.clip(y, 1e-9, 1 - 1e-9)
    slope, icpt = np.polyfit(np.log(x), np.log(-np.log(yy)), 1)
    p0 = [-math.exp(icpt), min(slope, -1e-3)]
    try:
        popt = _curve_fit(coverage_law, x, y, p0, ([-50.0, -5.0], [0.0, 0.0]))
    except (RuntimeError, ValueError):
        return Fit("coverage", n_points=len(x), error="curve_fit did not converge")
    a, b = (float(v) for v in popt)
    return Fit("coverage", {"a": a, "b": b}, r_squared(y, coverage_law(x, a, b)), len(x))


# -- out-of-sample error ---------------------------------------------------------------------
def predict(fit: Fit, x: Sequence[float]) -> np.ndarray:
    """The fitted law's value at `x` (power_law, exp_decay or coverage)."""
    p = fit.params
    if fit.law == "power_law":
        return power_law(np.asarray(x, dtype=float), p["a_max"], p["b"], p["alpha"], p["c0"])
    if fit.law == "exp_decay":
        return exp_decay(np.asarray(x, dtype=float), p["e_inf"], p["amp"], p["c"])
    if fit.law == "coverage":
        return coverage_law(np.asarray(x, dtype=float), p["a"], p["b"])
    raise ValueError(f"unknown law {fit.law!r}")


def leave_one_out(fitter, x: Sequence[float], y: Sequence[float]) -> dict[str, float | int | None]:
    """Leave-one-budget-out error of `fitter(x, y) -> Fit`: each point is predicted by the
    law fitted on the others. `rmse` over the points that could be predicted (`points`);
    `r2` is 1 - SSE/SST of those predictions (it can be negative: worse than the mean)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    preds, truth = [], []
    for i in range(len(xa)):
        keep = np.arange(len(xa)) != i
        f = fitter(xa[keep].tolist(), ya[keep].tolist())
        if f.ok:
            preds.append(float(predict(f, [xa[i]])[0]))
            truth.append(float(ya[i]))
    if not preds:
        return {"rmse": None, "r2": None, "points": 0}
    p, t = np.array(preds), np.array(truth)
    return {"rmse": float(np.sqrt(np.mean((p - t) ** 2))), "r2": r_squared(t, p) if len(t) > 1 else None,
            "points": len(t)}
