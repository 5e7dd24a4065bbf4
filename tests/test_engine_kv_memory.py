"""The engine's KV memory bound: a workload far above it runs within it, outputs unchanged;
`--kv-memory` sets it from solve, eval, sweep and serve."""
from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

from ttscale.engine import TorchEngine
from ttscale.errors import TTScaleError
from ttscale.types import GenerationRequest as Req, SamplingParams as SP

CONTEXT = 128  # max_seq_len: keeps the smallest allowed bound (one context row) small


def _workload():
    return [Req("Q: 12+7*3\n", SP(n=16, temperature=1.0, max_tokens=40, seed=2, logprobs=True)),
            Req("Q: 8-2+9+6\n", SP(n=8, temperature=0, max_tokens=40)),
            Req("Q: 5*5-3\n=25-3\n", SP(n=2, temperature=0.7, max_tokens=90, seed=4))]


def test_workload_ten_times_the_bound_runs_within_it_unchanged(random_model_dir):
    free = TorchEngine(random_model_dir, max_seq_len=CONTEXT)
    bound = (CONTEXT // free.kv_block + 1) * free.block_bytes  # one sequence of the context
    tight = TorchEngine(random_model_dir, max_seq_len=CONTEXT, kv_memory=bound)
    ref = free.generate(_workload())
    handles = [tight.submit(r) for r in _workload()]
    while tight.step():
        assert tight.pool.nbytes <= bound
    got = [h.result for h in handles]
    assert free.peak_decode_kv_bytes >= 9 * bound  # what the workload takes unbounded
    assert tight.peak_decode_kv_bytes <= bound
    for a, b in zip(ref, got):
        assert a.error is None and b.error is None
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    assert max(abs(x - y) for x, y in zip(ref[0].completions[3].logprobs,
                                          got[0].completions[3].logprobs)) < 1e-4


def test_too_small_a_bound_is_a_startup_error(random_model_dir):
    with pytest.raises(TTScaleError, match=r"kv_memory=1000 is too small; accepted: at least \d+ bytes"):
        TorchEngine(random_model_dir, max_seq_len=CONTEXT, kv_memory=1000)


# --- `--kv-memory` on the commands that build the engine -----------------------------------

TINY = "ttscale-tiny"  # 256-token context: the smallest bound is (16 + 1 scratch) blocks x 32768 = 557056 bytes
SMALL = "600K"  # 614400 bytes: 18 blocks, a few samples of a short prompt and 48 tokens at a time




@pytest.mark.parametrize("temperature", ["0", "1.0"])
def test_solve_under_a_small_kv_memory_gives_the_same_samples(temperature, monkeypatch, capsys,
                                                              tmp_path):
    def run(name, *extra):
        code, _, err = run_cli(monkeypatch, capsys, "solve", "--model", TINY, "--task", "arith",
                             "--level", "2", "--num-problems", "2", "--strategy", "majority",
                             "--n", "24", "--temperature", temperature, "--seed", "5",
                             "--max-tokens", "48", "--samples-out", str(tmp_path / name), *extra)
        assert code == 0, err
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]

    free, tight = run("free.jsonl"), run("tight.jsonl", "--kv-memory", SMALL)
    assert [r["responses"] for r in tight] == [r["responses"] for r in free]
    assert all(len(r["responses"]) == 24 for r in free)


def test_eval_under_a_small_kv_memory_gives_the_same_table(monkeypatch, capsys):
    common = ["eval", "--model", TINY, "--task", "arith", "--level", "3", "--num-problems", "12",
              "--n", "4", "--json"]
    rows = []
    for extra in ([], ["--kv-memory", SMALL]):
        code, out, err = run_cli(monkeypatch, capsys, *common, *extra)
        assert code == 0, err
        rows.append(json.loads(out))
    for key in ("greedy_acc", "maj_acc", "pass_at_n", "mean_tokens"):
        assert rows[1][key] == rows[0][key], key


def test_serve_under_a_small_kv_memory_answers_as_without():
    import httpx

    from ttscale.cli.options import parse_size
    from ttscale.serve import create_app
    from ttscale.serve.build import ServeOptions, build_config
    from ttscale.serve.runner import ServerThread

    body = {"model": TINY, "prompt": "Q: 12+7*3\n", "n": 16, "temperature": 1.0, "seed": 3,
            "max_tokens": 40}
    bound = parse_size("--kv-memory", SMALL)
    texts, peaks = [], []
    for kv in (None, bound):
        cfg = build_config(ServeOptions(model=TINY, kv_memory=kv))
        with ServerThread(create_app(cfg)) as s:
            r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        texts.append([c["text"] for c in r.json()["choices"]])
        peaks.append(cfg.generator.peak_decode_kv_bytes)
    assert peaks[0] > bound >= peaks[1]  # the request needs more than the bound, ran within it
    assert texts[1] == texts[0] and len(texts[0]) == 16


@pytest.mark.parametrize("args, named", [
    (["solve", "--model", TINY, "--kv-memory", "2X"], "--kv-memory '2X' is not a size"),
    (["eval", "--model", TINY, "--kv-memory", "-5M"], "--kv-memory '-5M' is not a size"),
    (["sweep", "--model", TINY, "--kv-memory", "1.5Q"], "--kv-memory '1.5Q' is not a size"),
    (["serve", "--model", TINY, "--kv-memory", "lots"], "--kv-memory 'lots' is not a size"),
    (["solve", "--model", TINY, "--kv-memory", "0"], "--kv-memory '0' is out of range"),
    (["solve", "--model", TINY, "--backend", "openai", "--base-url", "http://127.0.0.1:9",
      "--kv-memory", "1G"], "--kv-memory applies only to --backend torch"),
    (["eval", "--model", TINY, "--backend", "hf", "--kv-memory", "1G"],
     "--kv-memory applies only to --backend torch"),
    (["sweep", "--model", TINY, "--backend", "openai", "--base-url", "http://127.0.0.1:9",
      "--kv-memory", "1G"], "--kv-memory applies only to --backend torch"),
    (["serve", "--upstream", "http://127.0.0.1:9", "--upstream-model", TINY, "--kv-memory",
      "1G"], "--kv-memory applies only to the embedded engine")])
def test_bad_kv_memory_is_one_line_exit_2(args, named, monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, *args, *(["--out", str(tmp_path / "s")]
                                                       if args[0] == "sweep" else []))
    assert code == 2 and "\n" not in err and named in err, err
    assert "accepted" in err or "only to" in err


@pytest.mark.parametrize("command", ["solve", "eval", "sweep"])
def test_a_kv_memory_below_one_context_row_reaches_the_engine_and_is_refused(command, monkeypatch,
                                                                            capsys, tmp_path):
    extra = ["--out", str(tmp_path / "s")] if command == "sweep" else []
    code, _, err = run_cli(monkeypatch, capsys, command, "--model", TINY, "--kv-memory", "512K",
                         *extra)
    assert code == 2 and "kv_memory=524288 is too small; accepted: at least 557056 bytes" in err, err
