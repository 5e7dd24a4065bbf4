"""`ttscale sweep --backend openai` over several real servers on loopback: requests fan out
to each, and the measured results are those of one server (same seeds, same answers)."""
from __future__ import annotations

import json

import pytest
from serve_helpers import MODEL, QuirkyProxy
from typer.testing import CliRunner

from ttscale.serve.runner import ServerThread


def _sweep(out, *args):
    from ttscale.cli import app

    res = CliRunner().invoke(app, [
        "sweep", "--backend", "openai", "--model", MODEL, "--task", "arith", "--levels", "1",
        "--num-problems", "2", "--ns", "1,2", "--replicates", "1", "--scorer", "none",
        "--strategies", "greedy", "--max-tokens", "8", "--no-report", "--out", str(out),
        "--json", *args])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _outcomes(records):
    return sorted((r["problem_id"], r["config"], r["seed"], r["answer"], r["correct"])
                  for r in records)


def test_sweep_fans_out_over_two_servers_with_the_results_of_one(server, random_model_dir,
                                                                  tmp_path):
    proxies = [QuirkyProxy(server.url), QuirkyProxy(server.url)]
    with ServerThread(proxies[0].app) as a, ServerThread(proxies[1].app) as b:
        two = _sweep(tmp_path / "two", "--base-url", a.url, "--base-url", b.url,
                     "--shape-from", random_model_dir)
    one = _sweep(tmp_path / "one", "--base-url", server.url, "--shape-from", random_model_dir)
    assert proxies[0].calls > 0 and proxies[1].calls > 0
    assert _outcomes(two) == _outcomes(one)
    assert all(r["flops"] > 0 for r in two)


def test_sweep_without_a_shape_of_an_unknown_model_names_the_flags(server, tmp_path):
    from ttscale.cli import app

    res = CliRunner().invoke(app, ["sweep", "--backend", "openai", "--model", "served-x",
                                   "--base-url", server.url, "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "--shape-from" in str(res.exception) and "served-x" in str(res.exception)


def test_a_few_shot_sweep_stops_every_sample_before_the_next_question(server, random_model_dir,
                                                                       tmp_path):
    recs = [{"question": f"Ann has {i} pens and gets 1 more. How many?",
             "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(1, 9)]
    (tmp_path / "t_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "t_train.jsonl").write_text(json.dumps(dict(recs[0], question="Bo has 2.")) +
                                            "\n")
    proxy = QuirkyProxy(server.url)
    with ServerThread(proxy.app) as s:
        from ttscale.cli import app

        res = CliRunner().invoke(app, [
            "sweep", "--backend", "openai", "--model", MODEL, "--base-url", s.url,
            "--shape-from", random_model_dir, "--task", str(tmp_path / "t_test.jsonl"),
            "--shots", "1", "--ns", "1,2", "--replicates", "1", "--scorer", "none",
            "--strategies", "greedy", "--max-tokens", "8", "--no-report",
            "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(proxy.bodies) >= 2  # the stored samples and the greedy run
    assert all("\nQuestion:" in b["stop"] for b in proxy.bodies)
    assert all(b["prompt"].startswith("Question: Bo has 2.") for b in proxy.bodies)
