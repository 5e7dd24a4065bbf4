"""Expert iteration (ReST-EM): search, keep only verified solutions, fine-tune, report rounds."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ttscale.engine.flops import ModelShape
from ttscale.errors import TTScaleError
from ttscale.rewards import get_scorer
from ttscale.strategies import solve
from ttscale.tasks import get_task
from ttscale.train.data import IGNORE
from ttscale.train.distill import (DistillConfig, distill, packed_examples, search_round,
                                   verified_solutions)
from ttscale.types import Completion, GenerationResult, Problem, Usage

ARITH = get_task("arith")


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
    assert examples == [{"problem_id": "a", "level": 1, "prompt": "Q: 2+3\n", "solution": "=5\nA: 5\n"}]
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
