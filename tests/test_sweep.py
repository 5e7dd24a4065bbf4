"""The sweep: resumable records (a real SIGKILL mid-run), sample once / select many."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ttscale.errors import TTScaleError
from ttscale.eval.store import JsonlStore, read_jsonl
from ttscale.eval.sweep import RunSpec, SweepConfig, run_sweep

GRID = ["--task", "countdown", "--levels", "1,2", "--num-problems", "3", "--n-max", "8",
        "--ns", "1,2,4,8", "--replicates", "2", "--max-tokens", "24", "--strategies", "greedy",
        "--no-report", "--threads", "1", "--json"]


def config(model: str) -> SweepConfig:
    return SweepConfig(models=[model], tasks=["countdown"], levels=[1, 2], num_problems=3,
                       n_max=8, ns=[1, 2, 4, 8], replicates=2, max_tokens=24,
                       runs=[RunSpec("greedy")])


def _stable(rec: dict) -> dict:
    """A record without its wall-clock times (the only thing a rerun may change)."""
    clock = ("wall_s", "latency_s", "score_wall_s")
    out = {k: v for k, v in rec.items() if k not in clock}
    if "cost" in out:
        out["cost"] = {k: v for k, v in out["cost"].items() if k not in clock}
    if "set" in out:
        out["set"] = {k: v for k, v in out["set"].items() if k not in clock}
    return out


def _sweep_cmd(model: str, out, *extra: str) -> list[str]:
    code = "import sys; from ttscale.cli import main; sys.argv[0] = 'ttscale'; main()"
    return [sys.executable, "-c", code, "sweep", "--model", model, "--out", str(out), *GRID, *extra]


def test_store_drops_a_truncated_last_line_and_never_repeats_a_key(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "v": 1}\n{"key": "b", "v": 2}\n{"key": "c", "v"')
    store = JsonlStore(path)
    assert store.done == {"a", "b"}
    assert store.append({"key": "c", "v": 3}) and not store.append({"key": "a", "v": 9})
    store.close()
    assert [r["key"] for r in read_jsonl(path)] == ["a", "b", "c"]
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(TTScaleError, match=":2: malformed"):
        read_jsonl(path)


def test_killed_sweep_resumes_with_exactly_the_records_of_an_uninterrupted_run(
        random_model_dir, tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses below (--threads 1): identical arithmetic
    try:
        reference = tmp_path / "reference"
        run_sweep(config(random_model_dir), reference, progress=False)
    finally:
        torch.set_num_threads(threads)
    expected = {r["key"]: _stable(r) for r in read_jsonl(reference / "results.jsonl")}

    out = tmp_path / "killed"
    proc = subprocess.Popen(_sweep_cmd(random_model_dir, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 60:
            os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up, as in a real crash
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    partial = results.read_bytes().count(b"\n")
    assert 0 < partial < len(expected)

    done = subprocess.run(_sweep_cmd(random_model_dir, out, "--resume"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["written"] == len(expected) - partial
    got = read_jsonl(results)
    assert len(got) == len({r["key"] for r in got}) == len(expected)  # nothing lost or repeated
    assert {r["key"]: _stable(r) for r in got} == expected
    ref_samples = [_stable(s) for s in read_jsonl(reference / "samples.jsonl")]
    assert sorted(map(json.dumps, (_stable(s) for s in read_jsonl(out / "samples.jsonl")))) == \
        sorted(map(json.dumps, ref_samples))


class CountingGenerator:
    """The real engine, counting the requests it serves."""

    def __init__(self, inner):
        self.inner, self.requests = inner, 0
        self.model_name, self.shape, self.context_length = inner.model_name, inner.shape, inner.context_length

    def generate(self, requests):
        self.requests += len(requests)
        return self.inner.generate(requests)

    def tokenize(self, text):
        return self.inner.tokenize(text)

    def detokenize(self, ids):
        return self.inner.detokenize(ids)


def test_new_rules_and_smaller_n_cost_no_generation(random_model_dir, tmp_path):
    from ttscale.engine import load_generator

    gen = CountingGenerator(load_generator(random_model_dir))
    cfg = config(random_model_dir)
    cfg.rules, cfg.ns, cfg.runs = ["majority"], [8], []
    first = run_sweep(cfg, tmp_path, progress=False, generators={random_model_dir: gen})
    drawn = gen.requests
    assert drawn == 6 and first.records == 6 * 2  # one request of 8 samples per problem
    cfg.rules, cfg.ns = ["majority", "best_of_n", "esc", "adaptive_consistency", "pass_at_k",
                         "confident_consistency"], [2, 4, 8]
    cfg.confidences = [0.5, 0.9]
    second = run_sweep(cfg, tmp_path, resume=True, progress=False, generators={random_model_dir: gen})
    assert gen.requests == drawn  # every new record came from the stored samples
    assert second.written > 0
    recs = read_jsonl(tmp_path / "results.jsonl")
    confident = {r["config"] for r in recs if r["strategy"] == "confident_consistency"}
    assert confident == {"confident_consistency(confidence=0.5,n=8,threshold=0.95)",
                         "confident_consistency(confidence=0.9,n=8,threshold=0.95)"}
    for r in recs:  # costs: prefill once plus the samples a rule used
        assert r["flops"] > 0 and r["tokens"] > 0
    by = {(r["problem_id"], r["config"], r["seed"]): r for r in recs}
    pid = recs[0]["problem_id"]
    assert by[(pid, "majority(n=2)", 0)]["flops"] < by[(pid, "majority(n=8)", 0)]["flops"]
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert all(len(s["responses"]) == 8 for s in samples)
    full = by[(samples[0]["problem_id"], "majority(n=8)", 0)]
    assert full["cost"]["policy_tokens"] == (samples[0]["set"]["prompt_tokens"] - samples[0]["set"]["cached_tokens"]
                                             + sum(samples[0]["set"]["completion_tokens"]))


def test_bad_grid_is_refused_before_any_work(tmp_path):
    cfg = config("unused")
    cfg.ns = [32]
    with pytest.raises(TTScaleError, match="ns=\\[32\\]"):
        run_sweep(cfg, tmp_path, progress=False)
    cfg.ns, cfg.rules = [2], ["plurality"]
    with pytest.raises(TTScaleError, match="unknown selection rule 'plurality'"):
        run_sweep(cfg, tmp_path, progress=False)


def test_torch_engine_and_openai_backend_give_the_same_records(random_model_dir, tmp_path):
    """Greedy decoding with a fixed seed, once on the engine in-process and once through the
    OpenAI-compatible backend against a real loopback server serving that engine: the same
    records (answers, grades, tokens, FLOPs). Prefix caching is off on both sides, so that
    costs do not depend on what the server computed before."""
    sys.path.insert(0, os.path.dirname(__file__))
    from serve_helpers import MODEL, engine_server

    from ttscale.engine import load_generator
    from ttscale.engine.openai_backend import OpenAIGenerator

    local = load_generator(random_model_dir, model_name=MODEL, prefix_cache_bytes=0)
    served = load_generator(random_model_dir, model_name=MODEL, prefix_cache_bytes=0)
    cfg = SweepConfig(models=[MODEL], tasks=["arith"], levels=[1, 3], num_problems=2, n_max=1,
                      ns=[1], rules=["majority"], replicates=1, temperature=0.0, max_tokens=16,
                      scorer=None, runs=[RunSpec("greedy")])
    run_sweep(cfg, tmp_path / "torch", progress=False, generators={MODEL: local})
    with engine_server(served) as server:
        s = served.shape
        remote = OpenAIGenerator(server.url, MODEL, s.n_params, s.n_layer, s.d_model)
        cfg.backend = "openai"
        run_sweep(cfg, tmp_path / "openai", progress=False, generators={MODEL: remote})

    def rows(d):
        return {r["key"]: {k: v for k, v in _stable(r).items() if k != "backend"}
                for r in read_jsonl(d / "results.jsonl")}

    a, b = rows(tmp_path / "torch"), rows(tmp_path / "openai")
    assert len(a) == 8 and a == b


def test_default_sweep_leaves_room_for_every_reference_solution():
    """The main job must not cut solutions short: its token limit covers the longest reference
    solution (with its end token) of every task and level it runs."""
    from transformers import AutoTokenizer

    from ttscale.eval.sweep import default_config
    from ttscale.models.registry import resolve_model
    from ttscale.tasks import get_task

    cfg = default_config()
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.models[0]))
    for name in cfg.tasks:
        task = get_task(name)
        for level in cfg.levels:
            problems = task.problems(split="test", level=level, n=200, seed=0)
            longest = max(len(tok(p.solution, add_special_tokens=False)["input_ids"]) for p in problems)
            assert longest + 1 <= cfg.max_tokens, (name, level, longest, cfg.max_tokens)
            if "high" in cfg.efforts:  # the long mode's chains get the long-mode limit
                limit = cfg.setting_sampling({"effort": "high"})["max_tokens"]
                longest = max(len(tok(task.long_solution(p), add_special_tokens=False)["input_ids"])
                              for p in problems[:50])
                assert longest + 1 <= limit, (name, level, longest, limit)


def test_the_default_sweep_runs_both_modes_on_a_model_that_learned_the_long_mode():
    from ttscale.eval.sweep import default_config, thinks_long
    from ttscale.models.registry import resolve_model

    cfg = default_config()
    assert cfg.efforts == ["low", "high"] and thinks_long(resolve_model(cfg.models[0]))
    assert cfg.scorer == "likelihood" and cfg.baseline_models == ["ttscale-base"]


def test_grid_model_keeps_the_embedded_default_around_another_grid_model():
    from typer.testing import CliRunner

    from ttscale.cli import app
    from ttscale.eval.sweep import default_config

    base, other = default_config(), default_config(grid_model="ttscale-tiny")
    assert other.models == ["ttscale-tiny"] and other.efforts == ["low"]  # tiny has no long mode
    assert (other.tasks, other.levels, other.baseline_models, other.runs) == (
        base.tasks, base.levels, base.baseline_models, base.runs)
    assert default_config(grid_model="ttscale-small-long").efforts == ["low", "high"]
    res = CliRunner().invoke(app, ["sweep", "--model", "ttscale-tiny",
                                   "--grid-model", "ttscale-tiny"])
    assert res.exit_code == 2 and "--grid-model" in res.output
    res = CliRunner().invoke(app, ["sweep", "--grid-model", "no-such-model"])
    assert res.exit_code != 0 and "no-such-model" in (res.output + str(res.exception))
