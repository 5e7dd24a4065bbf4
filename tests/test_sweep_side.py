"""The checker beside the headline (issue 14 item 4): its records are made from the same stored
samples, named apart, and never enter the frontier, the planner or the fixed references."""
from __future__ import annotations

import pytest

from ttscale.errors import TTScaleError
from ttscale.eval.report import analyze
from ttscale.eval.store import load_results, load_samples, split_side
from ttscale.eval.sweep import RunSpec, SweepConfig, run_sweep


def test_checker_records_sit_beside_the_headline_and_pick_a_checked_sample(tmp_path):
    cfg = SweepConfig(models=["ttscale-tiny"], tasks=["countdown", "arith"], levels=[2],
                      num_problems=4, n_max=4, ns=[1, 4], replicates=1, max_tokens=48,
                      temperature=1.0, runs=[RunSpec("greedy")], side_scorers=["checker"])
    run_sweep(cfg, tmp_path, progress=False)
    main, side = split_side(load_results(tmp_path))
    assert side and all(r["task"] == "countdown" for r in side)  # arith's answer needs a reference
    assert {r["config"] for r in side} == {"best_of_n(n=1,scorer=checker)", "best_of_n(n=4,scorer=checker)",
                                           "weighted_majority(n=1,scorer=checker)",
                                           "weighted_majority(n=4,scorer=checker)"}
    assert all(r["cost"]["verifier_flops"] == 0 for r in side)
    stores = {s["problem_id"]: s["set"] for s in load_samples(tmp_path)}
    for r in side:  # the checker is exact: best-of-4 is right exactly when a sample is
        if r["config"] == "best_of_n(n=4,scorer=checker)":
            assert r["correct"] == any(stores[r["problem_id"]]["correct"])
    a = analyze(tmp_path)
    shown = {p["config"] for p in a["curves"]} | {p["config"] for p in a["frontier"]}
    assert not any("checker" in c for c in shown)
    ck = a["headline"]["with_checker"]
    assert ck["tasks"] == ["countdown"] and ck["num_problems"] == 4
    assert "checker" in a["side"]["rows"][0]["config"]


def test_an_unknown_side_scorer_is_refused_before_any_work(tmp_path):
    cfg = SweepConfig(models=["ttscale-tiny"], side_scorers=["prm"])
    with pytest.raises(TTScaleError, match="side scorer 'prm'.*checker"):
        run_sweep(cfg, tmp_path, progress=False)
