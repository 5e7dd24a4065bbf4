"""`ttscale report` renders from a stored results directory (tests/data/sweep-fixture, a real
sweep of ttscale-tiny), and `ttscale plan` makes a plan that `solve_with_plan` can load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from ttscale.cli import app
from ttscale.eval.report import analyze, frontier, pass_at_k, write_report
from ttscale.planner.plan import Plan

FIXTURE = Path(__file__).parent / "data" / "sweep-fixture"


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(FIXTURE, out)
    return out


def test_report_renders_tables_and_plots_from_stored_results(tmp_path):
    d = _copy(tmp_path)
    path = write_report(d)
    text = path.read_text()
    for section in ("## Compute-optimal frontier", "## Fitted laws", "## Budget -> recommended strategy",
                    "seed's recommendation", "## Headline numbers"):
        assert section in text
    for png in ("accuracy.png", "bins.png", "coverage.png"):
        data = (d / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({png})" in text
    a = json.loads((d / "analysis.json").read_text())
    # the frontier only ever rises in accuracy as FLOPs grow, and is made of measured points
    fr = a["frontier"]
    assert all(p["flops"] < q["flops"] and p["accuracy"] < q["accuracy"] for p, q in zip(fr, fr[1:]))
    measured = {(c["config"], c["flops"], c["accuracy"]) for c in a["curves"]}
    assert all((p["config"], p["flops"], p["accuracy"]) in measured for p in fr)
    assert "pass_at_k" not in {p["config"].split("(")[0] for p in fr}  # oracle rules are not deployable


def test_analysis_has_the_documented_json_shape(tmp_path):
    a = analyze(_copy(tmp_path))
    assert {"results_dir", "frontier", "fits", "headline"} <= set(a)
    assert all({"flops", "accuracy"} <= set(p) for p in a["frontier"])
    assert all("alpha" in f and "n_star" in f for f in a["fits"].values())
    assert {"planner_vs_best_fixed", "small_search_vs_large_greedy",
            "adaptive_stopping_saving"} <= set(a["headline"])
    assert {"accuracy_gain", "flops_saving"} <= set(a["headline"]["planner_vs_best_fixed"])


def test_report_and_plan_commands(tmp_path):
    d = _copy(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(d)])
    assert res.exit_code == 0, res.output
    assert "compute-optimal frontier" in res.output and (d / "report.md").exists()
    plan_path = tmp_path / "plan.json"
    res = runner.invoke(app, ["plan", "--results", str(d), "--out", str(plan_path)])
    assert res.exit_code == 0, res.output
    plan = Plan.load(plan_path)
    assert plan.model == "ttscale-tiny" and plan.bins and plan.blind[0].cost == 0.0


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code != 0
    assert "no results.jsonl" in str(res.exception)


def test_pass_at_k_and_frontier_helpers():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert abs(pass_at_k(4, 1, 2) - 0.5) < 1e-12  # 1 - C(3,2)/C(4,2)
    pts = [{"flops": 1, "accuracy": 0.5, "config": "a"}, {"flops": 2, "accuracy": 0.4, "config": "b"},
           {"flops": 3, "accuracy": 0.7, "config": "c"}]
    assert [p["config"] for p in frontier(pts)] == ["a", "c"]


def test_small_models_planner_is_held_to_the_large_models_greedy_flops(tmp_path):
    """Beside the best fixed configuration, the small model's cross-validated planner is given
    the large model's greedy FLOPs per problem (overall and per level) and spends no more."""
    d = _copy(tmp_path)
    greedy = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()
              if json.loads(line)["strategy"] == "greedy"]
    assert greedy
    with (d / "results.jsonl").open("a") as f:  # a 4x larger model: greedy at 4x the FLOPs
        for r in greedy:
            f.write(json.dumps({**r, "key": r["key"] + "-large", "model": "large",
                                "flops": 4 * r["flops"],
                                "cost": {**r["cost"], "flops": 4 * r["flops"]}}) + "\n")
    sizes = json.loads((d / "models.json").read_text())
    sizes["large"] = {**sizes["ttscale-tiny"], "n_params": 4 * sizes["ttscale-tiny"]["n_params"]}
    (d / "models.json").write_text(json.dumps(sizes))
    s = analyze(d)["headline"]["small_search_vs_large_greedy"]
    assert (s["small_model"], s["large_model"]) == ("ttscale-tiny", "large")
    for row in [s] + s["per_level"]:
        assert row["planner"]["budget"] == row["large_flops"]
        assert 0 < row["planner"]["flops"] <= row["large_flops"] * (1 + 1e-9)
        assert 0 <= row["planner"]["accuracy"] <= 1
    assert len(s["per_level"]) == len({r["level"] for r in greedy})
