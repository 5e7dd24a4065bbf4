"""`ttscale bench engine` on a tiny random model: the figures it reports and the doc it appends."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ttscale.errors import TTScaleError
from ttscale.bench.engine import append_to_doc, bench_engine, table


def test_bench_engine_reports_and_appends(random_model_dir, tmp_path):
    r = bench_engine(random_model_dir, ns=(1, 3), max_tokens=6, tree_depth=2)
    for key in ("engine_tok_s", "hf_tok_s", "speedup"):
        assert set(r[key]) == {"1", "3"} and all(v > 0 for v in r[key].values())
    assert r["tree_computed_without_cache"] == r["tree_prompt_tokens"]
    assert 0 < r["tree_computed_with_cache"] < r["tree_computed_without_cache"]
    assert r["tree_prefill_ratio"] > 1 and r["peak_kv_bytes"] > 0
    doc = append_to_doc(r, "test run", tmp_path / "benchmarks.md")
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "torch " in text and r["date"] in text
    assert "tree search" in table(r)


def test_bench_engine_cli_json(random_model_dir):
    from ttscale.cli import engine_cmd  # noqa: F401 - registers the command
    from ttscale.cli.app import app

    res = CliRunner().invoke(app, ["bench", "engine", "--model", random_model_dir, "--n", "2",
                                   "--max-tokens", "4", "--tree-depth", "1", "--json", "--no-doc"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert set(out["speedup"]) == {"2"} and "tree_prefill_ratio" in out
    bad = CliRunner().invoke(app, ["bench", "engine", "--n", "a,b", "--no-doc"])
    assert bad.exit_code != 0 and "a,b" in str(bad.exception)


def test_mixed_workload_has_one_prompt_per_task_and_level():
    from ttscale.bench.engine import workload_prompts
    from ttscale.tasks import BUILTIN_TASKS, LEVELS, get_task

    prompts = workload_prompts("mixed")
    assert len(prompts) == len(set(prompts)) == len(BUILTIN_TASKS) * len(LEVELS)
    assert prompts[0] == get_task("arith").problems("test", level=1, n=1)[0].prompt
    assert workload_prompts("single") == [get_task("arith").problems("test", level=3, n=1)[0].prompt]
    with pytest.raises(TTScaleError, match="workload 'many'.*mixed, single, spec, long"):
        workload_prompts("many")


def test_spec_and_long_workloads_report_their_figures(random_model_dir):
    from ttscale.bench.engine import bench_long, bench_spec

    s = bench_spec(random_model_dir, draft="ngram", k=3, ns=(2,), max_tokens=6, repeats=1)
    assert set(s["spec_speedup"]) == {"greedy/2", "sampled/2"} and s["identical"] is True
    assert all(v > 0 for v in s["spec_speedup"].values())
    assert all(0 <= v <= 1 for v in s["acceptance_rate"].values())
    assert "speedup" in table(s) and s["effort"] == "low"
    h = bench_spec(random_model_dir, draft="ngram", k=3, ns=(1,), max_tokens=4, repeats=1, effort="high")
    assert h["effort"] == "high" and h["prompt_tokens"] > s["prompt_tokens"]  # "Think: " prompts
    with pytest.raises(TTScaleError, match="unknown effort 'auto'; accepted: low, high"):
        bench_spec(random_model_dir, ns=(1,), max_tokens=4, repeats=1, effort="auto")
    r = bench_long(random_model_dir, n=4, prompt_tokens=60, max_tokens=5, kv_fraction=0.1)
    assert r["identical"] is True and r["prompt_tokens"] >= 60
    assert 0 < r["kv_bytes_peak"] <= r["kv_memory"] and r["kv_bytes_unbounded"] > 0
    assert "kv_memory" in table(r)
