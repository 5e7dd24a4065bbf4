"""Latency as a second budget: records carry depth and wall time, plans are cut to a latency
budget per problem, the report shows the accuracy-latency frontier and `headline.latency`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ttscale.cli import app
from ttscale.errors import TTScaleError
from ttscale.eval.report import analyze
from ttscale.planner.plan import Plan, Table, fit_plan, simulate
from ttscale.planner.samples import SampleSet, rounds_of

FIXTURE = Path(__file__).parent / "data" / "sweep-fixture"


def _table(n: int = 80, seed: int = 0) -> Table:
    """Greedy is fast and weak, voting slower, search slow and strong."""
    rng = np.random.default_rng(seed)
    configs = ["greedy()", "majority(n=8)", "beam_search(n=8)"]
    raw = np.array([1e6, 8e6, 20e6]) * rng.uniform(0.9, 1.1, (n, 3))
    acc = (rng.random((n, 3)) < [0.3, 0.45, 0.8]).astype(float)
    lat = np.array([0.05, 0.2, 2.0]) * rng.uniform(0.9, 1.1, (n, 3))
    return Table("m", [f"p{i}" for i in range(n)], [0] * n, [1] * n, rng.choice([0.0, 0.5, 1.0], n),
                 raw[:, 1] / 2, acc[:, 1].copy(), configs,
                 {c: {"strategy": c.split("(")[0], "params": {}, "source": "run"} for c in configs},
                 acc, raw, raw.copy(), np.full((n, 3), np.nan), lat, lat.copy(), np.full(n, 0.1))


def test_a_latency_budget_keeps_the_plan_within_it():
    table = _table()
    free = fit_plan(table)
    assert "beam_search(n=8)" in {o.config for o in free.blind}
    cut = fit_plan(table, latency_budget=0.5)
    offered = [o for b in cut.bins for o in b] + cut.blind
    assert offered and all(o.latency <= 0.5 for o in offered)
    assert "beam_search(n=8)" not in {o.config for o in offered}
    spend = simulate(cut, table, 30e6 * len(table))
    assert "beam_search(n=8)" not in set(spend.choice)
    assert spend.accuracy < simulate(free, table, 30e6 * len(table)).accuracy  # latency costs accuracy
    # a budget below the probe's own time: answered without a probe
    tight = free.with_latency_budget(0.08)
    assert not tight.can_probe and simulate(tight, table, 30e6 * len(table)).mode == "blind"
    assert Plan.from_dict(json.loads(json.dumps(cut.to_dict()))) == cut


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_latency_budget_is_refused(bad):
    with pytest.raises(TTScaleError, match="latency budget"):
        fit_plan(_table(20)).with_latency_budget(bad)


def test_depth_is_the_number_of_dependent_requests():
    order = list(range(8))
    assert len(rounds_of("majority", order, 8)) == 1
    assert len(rounds_of("esc", order, 8, window=4)) == 2
    assert len(rounds_of("adaptive_consistency", order, 5)) == 5
    assert rounds_of("majority", order, 8, start=4) == [[4, 5, 6, 7]]
    ss = SampleSet(answers=["1"] * 4, keys=["1"] * 4, correct=[True] * 4, scores=[None] * 4,
                   texts=[""] * 4, completion_tokens=[9, 19, 9, 9], sample_flops=[1.0] * 4,
                   wall_s=2.0)
    together = ss.latency([[0, 1, 2, 3]])
    one_by_one = ss.latency([[0], [1], [2], [3]])
    assert together == pytest.approx(2.0) and one_by_one == pytest.approx(2.0 * (10 + 20 + 10 + 10) / 20)


def test_plan_command_takes_a_latency_budget_and_the_report_shows_latency(tmp_path):
    d = tmp_path / "results"
    shutil.copytree(FIXTURE, d)
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--results", str(d), "--latency-budget", "0.05", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["latency_budget"] == 0.05
    assert all(o["latency"] <= 0.05 for o in plan["blind"])
    assert Plan.from_dict({k: v for k, v in plan.items() if k != "path"}).can_probe == (
        plan["probe_latency"] <= 0.05)
    bad = runner.invoke(app, ["plan", "--results", str(d), "--latency-budget", "-2"])
    assert bad.exit_code != 0
    a = analyze(d)
    lat = a["headline"]["latency"]
    assert {"greedy_wall_s", "within_2x", "within_10x"} <= set(lat)
    assert lat["within_10x"]["accuracy"] is not None
    from ttscale.eval.report import write_report

    text = write_report(d, a).read_text()
    assert "## Accuracy against latency" in text and "](latency.png)" in text
    assert (d / "latency.png").read_bytes()[:4] == b"\x89PNG"
    fr = a["latency_frontier"]
    assert all(p["latency_s"] < q["latency_s"] and p["accuracy"] < q["accuracy"] for p, q in zip(fr, fr[1:]))
