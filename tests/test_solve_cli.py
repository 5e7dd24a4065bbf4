"""`ttscale solve`: the documented JSON on the torch engine, bad input as one-line errors, and
every strategy of the parallel/sequential/stopping families over the OpenAI-compatible backend
against a real server on loopback."""
from __future__ import annotations

import json
import sys

import pytest
from serve_helpers import MODEL, engine_server, load_engine
from typer.testing import CliRunner

from ttscale.engine.openai_backend import OpenAIGenerator
from ttscale.eval.select import select_file
from ttscale.rewards.oracle import OracleScorer
from ttscale.strategies import solve
from ttscale.tasks import get_task

ARITH = get_task("arith")


def _solve(*args):
    from ttscale.cli import app

    res = CliRunner().invoke(app, ["solve", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_solve_prints_accuracy_cost_and_one_record_per_problem(random_model_dir):
    out = _solve("--model", random_model_dir, "--task", "arith", "--level", "1",
                 "--num-problems", "2", "--strategy", "majority", "--n", "2",
                 "--max-tokens", "4", "--scorer", "oracle", "--json")
    assert out["num_problems"] == 2 and len(out["problems"]) == 2
    rows = out["problems"]
    assert all({"answer", "correct", "flops", "tokens"} <= set(r) for r in rows)
    assert all(r["flops"] > 0 and r["tokens"] > 0 for r in rows)
    assert out["accuracy"] == sum(r["correct"] for r in rows) / 2
    assert out["mean_flops"] == pytest.approx(sum(r["flops"] for r in rows) / 2)
    assert out["mean_tokens"] == sum(r["tokens"] for r in rows) / 2
    assert out["params"]["n"] == 2 and out["params"]["max_tokens"] == 4


def test_solve_writes_a_store_that_select_reads(random_model_dir, tmp_path):
    store = tmp_path / "samples.jsonl"
    out = _solve("--model", random_model_dir, "--task", "arith", "--level", "1",
                 "--num-problems", "2", "--strategy", "best_of_n", "--scorer", "oracle",
                 "--param", "n=3", "--param", "max_tokens=3", "--samples-out", str(store),
                 "--json")
    recs = [json.loads(line) for line in store.read_text().splitlines()]
    assert [len(r["responses"]) for r in recs] == [3, 3] and all("scores" in r for r in recs)
    sel = select_file(store)
    assert set(sel["best_of_n"]) == {"1", "2", "3"}
    assert sel["pass_at_k"]["3"]["mean"] >= out["accuracy"]  # a pick can't beat pass@N


@pytest.mark.parametrize("args,msg", [
    (["--strategy", "beam"], "unknown strategy 'beam'; accepted: adaptive_consistency"),
    (["--strategy", "majority", "--n", "0"], "n=0 is out of range; accepted: >= 1"),
    (["--strategy", "majority", "--width", "2"], "unknown parameter for majority 'width'"),
    (["--strategy", "esc", "--param", "window"], "--param 'window' is not key=value"),
    (["--strategy", "greedy", "--scorer", "oracel"], "unknown scorer 'oracel'; accepted:"),
    (["--num-problems", "0"], "num_problems=0 is out of range"),
])
def test_bad_input_exits_2_with_one_line(random_model_dir, monkeypatch, capsys, args, msg):
    from ttscale.cli import main

    monkeypatch.setattr(sys, "argv", ["ttscale", "solve", "--model", random_model_dir,
                                      "--task", "arith", "--level", "1", *args, "--json"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


# -- the OpenAI-compatible backend against a real loopback server --------------------------------
@pytest.fixture(scope="module")
def server(random_model_dir):
    with engine_server(load_engine(random_model_dir)) as s:
        yield s


@pytest.fixture(scope="module")
def remote(server, random_model_dir):
    from ttscale.engine import load_generator

    gen = load_generator(server.url, backend="openai", model_name=MODEL,
                         shape_from=random_model_dir)
    yield gen
    gen.close()


REMOTE_RUNS = [
    ("greedy", {}), ("best_of_n", {"n": 2}), ("majority", {"n": 2}),
    ("weighted_majority", {"n": 2}), ("self_refine", {"rounds": 1}),
    ("budget_forcing", {"min_steps": 1, "max_tokens": 4, "max_waits": 1, "answer_tokens": 2}),
    ("esc", {"n": 2, "window": 1}), ("adaptive_consistency", {"n": 2}),
    ("deepconf", {"n": 3, "warmup": 2, "window": 2, "chunk": 2}),
]


@pytest.mark.parametrize("strategy,kw", REMOTE_RUNS, ids=[s for s, _ in REMOTE_RUNS])
def test_every_strategy_runs_over_the_openai_backend(remote, strategy, kw):
    assert isinstance(remote, OpenAIGenerator)
    p = ARITH.problems(level=1, n=1)[0]
    sol = solve(p, ARITH, remote, strategy, {"max_tokens": 3, "seed": 0, **kw},
                OracleScorer(ARITH))
    assert sol.candidates and sol.cost.policy_flops > 0 and sol.cost.policy_tokens > 0
    assert sol.text in [c.text for c in sol.candidates]


def test_solve_command_over_the_openai_backend(server, random_model_dir):
    out = _solve("--backend", "openai", "--base-url", server.url, "--model", MODEL,
                 "--shape-from", random_model_dir, "--task", "arith", "--level", "1",
                 "--num-problems", "1", "--strategy", "majority", "--n", "2",
                 "--max-tokens", "3", "--json")
    assert out["num_problems"] == 1 and out["mean_flops"] > 0
