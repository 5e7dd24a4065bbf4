"""Sampler settings (temperature, min_p, effort) as dimensions of the sweep's grid: sampled once
per setting, selected many times, chosen by the planner like the strategy and N."""
from __future__ import annotations

import pytest

from ttscale.errors import TTScaleError
from ttscale.eval.store import load_results, load_samples
from ttscale.eval.sweep import RunSpec, SweepConfig, run_sweep
from ttscale.planner.plan import build_table, fit_plan


def _config(model: str) -> SweepConfig:
    return SweepConfig(models=[model], tasks=["countdown"], levels=[1], num_problems=3, n_max=4,
                       ns=[1, 4], replicates=1, max_tokens=16, temperature=0.6,
                       temperatures=[0.6, 1.2], min_ps=[0.0, 0.3], rules=["majority", "esc"],
                       runs=[RunSpec("greedy")], scorer=None)


def test_each_sampler_setting_is_sampled_once_and_selected_many_times(random_model_dir, tmp_path):
    import torch

    torch.set_num_threads(1)
    cfg = _config(random_model_dir)
    out = tmp_path / "grid"
    first = run_sweep(cfg, out, progress=False)
    stores = load_samples(out)
    assert len(stores) == 3 * 4  # problems x settings, one draw each
    assert {s["setting"] for s in stores} == {"", "min_p=0.3", "temperature=1.2",
                                             "min_p=0.3,temperature=1.2"}
    records = load_results(out)
    configs = {r["config"] for r in records}
    assert {"majority(n=4)", "majority(min_p=0.3,n=4)", "majority(n=4,temperature=1.2)",
            "esc(min_p=0.3,n=4,temperature=1.2,window=4)", "greedy()"} <= configs
    for r in records:  # every record carries its sequential depth and its wall time
        if r["strategy"] == "esc":
            assert r["depth"] == -(-r["samples_used"] // r["params"]["window"])
        else:
            assert r["depth"] == 1
        assert r["latency_s"] > 0
    # a setting's records read its own store: same samples, different selections
    again = run_sweep(cfg, out, resume=True, progress=False)
    assert again.written == 0 and again.records == first.records
    table = build_table(records, stores, random_model_dir)
    assert {"majority(n=4,temperature=1.2)", "majority(n=4)"} <= set(table.configs)
    j_base, j_hot = table.configs.index("majority(n=4)"), table.configs.index("majority(n=4,temperature=1.2)")
    # the base setting continues from the probe's samples; another setting pays all its samples
    assert (table.extra[:, j_base] <= table.raw[:, j_base] - table.probe_cost + 1e-6).all()
    assert (table.extra[:, j_hot] == table.raw[:, j_hot]).all()
    plan = fit_plan(table, sampling=cfg.sampling)
    offered = {o.config for b in plan.bins for o in b} | {o.config for o in plan.blind}
    assert offered <= set(table.configs) | {"probe", "none"}


@pytest.mark.parametrize("args, named", [
    (["--min-p", "1.5"], "min_p=1.5"), (["--min-p", "x"], "'x'"), (["--temperature", "-1"], "-1"),
    (["--effort", "medium"], "medium"), (["--min-p", "0.1,0.1"], "repeats"),
    (["--confidences", "x"], "'x'"), (["--confidences", "nan"], "confidence=nan"),
    (["--confidences", "0.9,0.9"], "repeat")])
def test_bad_sampler_grid_is_one_line_exit_2(args, named, tmp_path):
    code = "import sys; from ttscale.cli import main; sys.argv[0] = 'ttscale'; main()"
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code, "sweep", "--model", "ttscale-tiny", "--out",
                          str(tmp_path / "x"), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], res.stderr


def test_grid_values_are_checked_before_any_work():
    with pytest.raises(TTScaleError, match="min_p=2"):
        SweepConfig(models=["m"], min_ps=[0.0, 2]).validate()
    with pytest.raises(TTScaleError, match="effort"):
        SweepConfig(models=["m"], efforts=["low", "max"]).validate()


def test_long_mode_settings_sample_with_room_for_long_chains():
    """At effort "high" the sample store, the strategies run for real and the planner's online
    draws all get the long-mode token limit; the short mode keeps the sweep's own."""
    from ttscale.planner.plan import Plan
    from ttscale.planner.solve import _sampling
    from ttscale.tasks.effort import LONG_MAX_TOKENS

    cfg = SweepConfig(models=["m"], efforts=["low", "high"], max_tokens=96)
    low, high = [cfg.setting_sampling(s) for s in cfg.settings()]
    assert low["max_tokens"] == 96 and "effort" not in low
    assert high["max_tokens"] == LONG_MAX_TOKENS and high["effort"] == "high"
    plan = Plan("m", 4, 1.0, [], [], [], {}, cfg.sampling, {})
    assert _sampling(plan, 4, 0).max_tokens == 96
    assert _sampling(plan, 4, 0, {"effort": "high"}).max_tokens == LONG_MAX_TOKENS


def test_a_baseline_model_answers_in_the_base_mode_only(random_model_dir, tmp_path):
    """The larger model's greedy answer is the comparison as deployed: with efforts low and high
    in the grid it runs once per problem in the base mode (the shipped base has no long mode and
    a 256-token context, so a long-mode run of it could not even start)."""
    import torch

    torch.set_num_threads(1)
    cfg = SweepConfig(models=[random_model_dir], baseline_models=["ttscale-base"], tasks=["arith"],
                      levels=[1], num_problems=1, n_max=2, ns=[2], replicates=1, max_tokens=8,
                      efforts=["low", "high"], rules=["majority"], runs=[RunSpec("greedy")], scorer=None)
    run_sweep(cfg, tmp_path / "s", progress=False)
    base = [r for r in load_results(tmp_path / "s") if r["model"] == "ttscale-base"]
    assert len(base) == 1 and base[0]["setting"] == ""
    grid = [r for r in load_results(tmp_path / "s") if r["model"] != "ttscale-base" and r["strategy"] == "greedy"]
    assert sorted(r["setting"] for r in grid) == ["", "effort=high"]
