"""Expert iteration (ReST-EM): search, keep only verified solutions, fine-tune, report rounds."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_helpers import run_cli

from ttscale.engine.flops import ModelShape
from ttscale.errors import TTScaleError
from ttscale.rewards import get_scorer
from ttscale.strategies import Candidate, Solution, solve
from ttscale.tasks import get_task
from ttscale.tasks.effort import LONG_MAX_DEPTH, apply_effort
from ttscale.train.data import IGNORE
from ttscale.train.distill import (DistillConfig, distill, packed_examples, search_params,
                                   search_round, verified_solutions)
from ttscale.types import Completion, Cost, GenerationResult, Problem, Usage

ARITH = get_task("arith")
TASKS = {"arith": ARITH, "countdown": get_task("countdown")}


@dataclass
class ScriptedSteps:
    """A Generator whose next steps are fixed per (prompt, partial solution): a tree known by hand,
    with right and wrong branches, so that the search returns both kinds of solutions."""

    script: dict[str, list[str]]
    model_name: str = "scripted"
    shape: ModelShape = ModelShape(n_params=1000, n_layer=2, d_model=8)
    context_length: int = 256
    calls: list[str] = field(default_factory=list)

    def generate(self, requests):
        out = []
        for r in requests:
            self.calls.append(r.prompt)
            options = self.script[r.prompt]
            comps = [Completion(options[j % len(options)], self.tokenize(options[j % len(options)]), "stop",
                                [-0.1] * len(options[j % len(options)])) for j in range(r.params.n)]
            out.append(GenerationResult(comps, Usage(len(r.prompt), 0, sum(len(c.text) for c in comps), 1.0)))
        return out

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(map(chr, ids))


def _problem(pid: str, question: str, answer: str) -> Problem:
    return Problem(id=pid, task="arith", level=1, question=question, prompt=f"Q: {question}\n", answer=answer)


SOLVABLE = _problem("a", "2+3", "5")
UNSOLVABLE = _problem("b", "4+4", "8")
SCRIPT = {
    # 2+3: a right branch and a wrong one, each followed by its answer
    "Q: 2+3\n": ["=5", "=6"], "Q: 2+3\n=5\n": ["A: 5"], "Q: 2+3\n=6\n": ["A: 6"],
    # 4+4: only wrong branches
    "Q: 4+4\n": ["=9", "=7"], "Q: 4+4\n=9\n": ["A: 9"], "Q: 4+4\n=7\n": ["A: 7"],
}
BEAM = {"n": 2, "width": 1, "seed": None}  # two beams: the wrong branch is searched too


def test_search_returns_wrong_solutions_and_distillation_keeps_only_verified_ones():
    gen = ScriptedSteps(SCRIPT)
    sol = solve(SOLVABLE, ARITH, gen, "beam_search", BEAM, get_scorer("oracle", task=ARITH))
    texts = sorted(c.text.strip() for c in sol.candidates)
    assert texts == ["=5\nA: 5", "=6\nA: 6"]  # the search itself finished a wrong solution too
    assert verified_solutions(ARITH, SOLVABLE, sol, keep=4) == ["=5\nA: 5\n"]


def test_a_search_round_keeps_only_verified_solutions_and_reports_the_solved_fraction():
    cfg = DistillConfig(strategy="beam_search", search_params=BEAM, keep_per_problem=2)
    examples, stats = search_round(ARITH, [SOLVABLE, UNSOLVABLE], ScriptedSteps(SCRIPT), cfg,
                                   get_scorer("oracle", task=ARITH))
    assert stats["solved"] == 0.5 and stats["problems"] == 2 and stats["kept"] == 1
    assert examples == [{"problem_id": "a", "task": "arith", "level": 1, "prompt": "Q: 2+3\n",
                         "solution": "=5\nA: 5\n"}]
    assert all(ARITH.is_correct(SOLVABLE, e["solution"]) for e in examples)


def test_packed_examples_train_only_on_solution_tokens():
    from ttscale.train.data import CharEncoder

    enc = CharEncoder()
    x, y = next(packed_examples([("Q: 2+3\n", "=5\nA: 5\n")], batch_size=1, block=40, seed=0))
    trained = [int(t) for t in y[0] if t != IGNORE]
    assert trained[: len("=5\nA: 5\n") + 1] == enc.encode("=5\nA: 5\n") + [enc.eos]
    with pytest.raises(TTScaleError, match="no examples"):
        next(packed_examples([], 1, 40, 0))


@pytest.mark.parametrize("kw,match", [
    (dict(strategy="dvts"), "unknown search strategy 'dvts'"),
    (dict(scorer="judge"), "unknown scorer 'judge'"),
    (dict(levels=[0]), "unknown level 0"),
    (dict(rounds=0), "rounds=0 is out of range"),
    (dict(search_params={"n": 6, "width": 4}), "multiple of width"),
    (dict(effort="auto"), "effort 'auto' is not supported by distillation .*; accepted: low, high$"),
    (dict(effort="max"), "unknown effort 'max'; accepted: low, high$"),
    (dict(task="arith,sudoku"), "got 'sudoku'; accepted: arith, countdown"),
    (dict(task="arith,arith"), "names a task twice"),
    (dict(task="arith,countdown", levels=[6]), "unknown level 6"),
])
def test_bad_configuration_is_refused_before_any_work(random_model_dir, tmp_path, kw, match):
    with pytest.raises(TTScaleError, match=match):
        distill(DistillConfig(**kw), random_model_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_distill_runs_rounds_reports_them_and_a_rerun_changes_nothing(random_model_dir, tmp_path):
    out = tmp_path / "distilled"
    cfg = DistillConfig(task="arith", levels=[1], rounds=1, problems_per_round=3, eval_problems=2,
                        search_params={"n": 2, "width": 1, "step_max_tokens": 8, "max_depth": 2})
    summary = distill(cfg, random_model_dir, out, progress=False)
    assert summary["parent"] == Path(random_model_dir).name
    rounds = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["problems"] == 3 and 0.0 <= rounds[1]["solved"] <= 1.0
    assert all(isinstance(r["accuracy"], float) for r in rounds)
    for line in (out / "data-round-1.jsonl").read_text().splitlines():  # whatever was kept verifies
        e = json.loads(line)
        p = next(q for q in ARITH.problems("train", 1, 3, seed=1) if q.id == e["problem_id"])
        assert ARITH.is_correct(p, e["solution"])
    from ttscale.models.registry import model_info

    assert model_info(out).parent == Path(random_model_dir).name  # what `ttscale models --json` reports
    assert not list(out.glob("round-*"))
    mtime = (out / "model.safetensors").stat().st_mtime
    assert distill(cfg, random_model_dir, out, progress=False)["rounds_done"] == 1
    assert (out / "model.safetensors").stat().st_mtime == mtime


def test_a_right_answer_under_a_long_mode_prompt_is_kept_only_as_a_long_chain():
    problem = ARITH.problems("train", 2, 1, seed=0)[0]
    high = apply_effort(problem, "high")
    short, long = problem.solution, high.solution  # both end with the right answer
    sol = Solution(problem.answer, short, [Candidate(short, problem.answer, 1.0), Candidate(long, problem.answer, 0.5)],
                   Cost(), "beam_search", {})
    assert ARITH.is_correct(high, short)
    assert verified_solutions(ARITH, high, sol, keep=2) == [long]
    assert verified_solutions(ARITH, problem, sol, keep=2) == [short]  # the short mode keeps its own chain


def test_effort_high_leaves_the_search_room_for_long_chains():
    assert search_params(DistillConfig(effort="low")).max_depth == 12
    assert search_params(DistillConfig(effort="high")).max_depth == LONG_MAX_DEPTH
    assert search_params(DistillConfig(effort="high", search_params={"max_depth": 20})).max_depth == 20
    assert DistillConfig(effort="high").block == 512 and DistillConfig().block == 256
    assert DistillConfig(effort="high", block=384).block == 384


def _kept(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "data-round-1.jsonl").read_text().splitlines()]


def _searched(e: dict, problems: int) -> Problem:
    """The train problem a kept example was found for (round 1, seed 0: problem seed 1)."""
    return next(p for p in TASKS[e["task"]].problems("train", e["level"], problems, seed=1) if p.id == e["problem_id"])


def test_distill_searches_both_tasks_and_fine_tunes_on_their_solutions_together(tmp_path, monkeypatch):
    import ttscale.train.distill as d

    tuned = []  # the (prompt, solution) pairs each fine-tuning run was given
    real = d.packed_examples
    monkeypatch.setattr(d, "packed_examples",
                        lambda pairs, *a, **kw: tuned.append(list(pairs)) or real(pairs, *a, **kw))
    out = tmp_path / "both"
    cfg = DistillConfig(task="arith,countdown", levels=[1], rounds=1, problems_per_round=4, eval_problems=1,
                        sft_steps=2, batch_size=2, search_params={"n": 2, "width": 1, "step_max_tokens": 24})
    summary = distill(cfg, "ttscale-tiny", out, progress=False)
    kept = _kept(out)
    assert {e["task"] for e in kept} == {"arith", "countdown"}  # one data set, examples of both tasks
    assert tuned == [[(e["prompt"], e["solution"]) for e in kept]]  # fine-tuned on all of it at once
    for e in kept:
        p = _searched(e, 2)  # 4 problems spread over 2 tasks x 1 level
        assert e["prompt"] == p.prompt and TASKS[e["task"]].is_correct(p, e["solution"])
    first = summary["rounds"][1]
    assert first["problems"] == 4 and set(first["solved_per_task"]) == {"arith", "countdown"}
    assert first["sft_steps"] >= 1
    for r in map(json.loads, (out / "distill_log.jsonl").read_text().splitlines()):
        per = r["accuracy_per_task_level"]
        assert set(per) == {"arith", "countdown"}
        cells = [per["arith"]["1"], per["countdown"]["1"]]
        assert r["accuracy"] == pytest.approx(sum(cells) / 2, abs=1e-4)
        assert r["accuracy_per_level"]["1"] == pytest.approx(sum(cells) / 2)
    assert summary["config"]["task"] == "arith,countdown"


def test_effort_high_searches_fine_tunes_and_evaluates_in_the_long_mode(tmp_path, monkeypatch, capsys):
    import ttscale.eval.evaluate as ev

    asked = []  # (prompt, max_tokens) of every evaluation: per round and the card's
    real = ev.evaluate

    def first_problem(generator, task, problems, *a, max_tokens, **kw):  # 1 problem, short: a fast test
        asked.extend((p.prompt, max_tokens) for p in problems)
        return real(generator, task, problems[:1], *a, max_tokens=min(max_tokens, 48), **kw)

    monkeypatch.setattr(ev, "evaluate", first_problem)
    out = tmp_path / "long"
    code, _, err = run_cli(monkeypatch, capsys, "train", "distill", "--model", "ttscale-small", "--task", "countdown",
                           "--level", "1", "--effort", "high", "--out", str(out), "--rounds", "1",
                           "--problems-per-round", "2", "--sft-steps", "2", "--eval-problems", "1", "--eval-n", "1")
    assert code == 0, err
    kept = _kept(out)
    assert kept  # ttscale-small has learned the long mode
    for e in kept:
        p = apply_effort(_searched(e, 2), "high")
        assert e["prompt"] == p.prompt and e["prompt"].startswith("Think: ")  # what the policy is fine-tuned on
        steps = TASKS["countdown"].split_steps(e["solution"])
        assert TASKS["countdown"].is_correct(p, e["solution"]) and all(TASKS["countdown"].check_steps(p, steps))
    config = json.loads((out / "training.json").read_text())["config"]
    assert config["effort"] == "high" and config["block"] == 512
    assert asked and all(q.startswith("Think: ") and m == 768 for q, m in asked)  # the rounds and the card
    assert {r["effort"] for r in json.loads((out / "eval.json").read_text())} == {"high"}
    assert "--effort high" in (out / "README.md").read_text()


@pytest.mark.parametrize("args,named", [
    (["--task", "arith", "--effort", "auto"], "effort 'auto'"),
    (["--task", "arith,sudoku"], "'sudoku'"),
])
def test_cli_refuses_a_bad_effort_or_task_in_one_line_before_any_work(tmp_path, monkeypatch, capsys, args, named):
    out = tmp_path / "never"
    code, _, err = run_cli(monkeypatch, capsys, "train", "distill", "--model", "ttscale-tiny", "--out", str(out), *args)
    assert code == 2 and named in err and len(err.splitlines()) == 1
    assert not out.exists()
