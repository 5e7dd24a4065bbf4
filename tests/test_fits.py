"""The scaling-law fits recover the parameters of synthetic curves, and say when they cannot."""
from __future__ import annotations

import numpy as np
import pytest

from ttscale.planner.fits import (coverage_law, exp_decay, fit_bon_error, fit_coverage,
                                  fit_power_law, power_law, saturation_budget)


def test_power_law_recovers_alpha_and_saturation_budget():
    c = np.geomspace(1e6, 1e9, 12)
    truth = dict(a_max=0.8, b=0.5, alpha=0.4)
    rng = np.random.default_rng(0)
    acc = power_law(c, c0=c[0], **truth) + rng.normal(0, 0.003, len(c))
    fit = fit_power_law(c, acc)
    assert fit.ok and fit.r2 > 0.99
    assert fit.params["alpha"] == pytest.approx(0.4, rel=0.1)
    assert fit.params["a_max"] == pytest.approx(0.8, abs=0.02)
    # N*: one doubling beyond it gains less than a point, one doubling before it more.
    n_star = fit.params["n_star"]
    exact = saturation_budget(0.5, 0.4, c[0])
    assert n_star == pytest.approx(exact, rel=0.35)
    gain = lambda x: power_law(2 * x, c0=c[0], **truth) - power_law(x, c0=c[0], **truth)  # noqa: E731
    assert gain(exact * 1.01) < 0.01 < gain(exact * 0.99)


def test_power_law_needs_three_budgets():
    fit = fit_power_law([1e6, 2e6], [0.1, 0.2])
    assert not fit.ok and "at least 3" in fit.error


def test_bon_error_recovers_rate_and_asymptote():
    n = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
    err = exp_decay(n, e_inf=0.15, amp=0.9, c=0.25)
    fit = fit_bon_error(n, err)
    assert fit.ok and fit.r2 > 0.999
    assert fit.params["c"] == pytest.approx(0.25, rel=0.02)
    assert fit.params["e_inf"] == pytest.approx(0.15, abs=0.005)


def test_coverage_recovers_a_and_b():
    k = np.arange(1, 65)
    cov = coverage_law(k, a=-2.0, b=-0.6)
    fit = fit_coverage(k, cov)
    assert fit.ok and fit.r2 > 0.999
    assert fit.params["a"] == pytest.approx(-2.0, rel=0.02)
    assert fit.params["b"] == pytest.approx(-0.6, rel=0.02)


def test_coverage_of_zero_is_reported_not_fitted():
    fit = fit_coverage([1, 2, 4, 8], [0.0, 0.0, 0.1, 0.2])
    assert not fit.ok and "zero" in fit.error
