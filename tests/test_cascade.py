"""The verification-gated cascade: greedy kept when accepted, escalation when flagged, a FLOPs cap
that is never exceeded, thresholds calibrated away from the scored split."""
from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli

from ttscale.engine import load_generator
from ttscale.errors import TTScaleError
from ttscale.rewards import get_scorer
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.strategies import get_params, solve
from ttscale.strategies.cascade import (best_threshold, calibrate_cascade, policy_bound,
                                        verifier_bound)
from ttscale.strategies.voting import vote
from ttscale.tasks import get_task
from ttscale.types import Usage

ARITH = get_task("arith")


class FixedVerdict:
    """A verifier whose verdict is fixed in advance: the cascade's gate is what is tested."""

    def __init__(self, value: float) -> None:
        self.name, self.value, self.calls = "fixed", value, 0

    def score(self, problem, solutions, completions=None):
        self.calls += 1
        return ScoreBatch([Scored(self.value) for _ in solutions], Usage())


@pytest.fixture(scope="module")
def gen(random_model_dir):
    torch.manual_seed(0)
    return load_generator(random_model_dir)


@pytest.fixture(scope="module")
def prm_dir(random_model_dir, tmp_path_factory):
    """A randomly initialised reward model of the tiny size (real weights, real forward pass)."""
    from transformers import AutoTokenizer

    from ttscale.train.prm import PRMConfig, build_model

    path = tmp_path_factory.mktemp("random-prm")
    model = build_model(PRMConfig(init="scratch", size="ttscale-tiny"), random_model_dir)
    model.config.ttscale = {"kind": "prm", "step_delimiter": "\n"}
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(random_model_dir).save_pretrained(path)
    return str(path)


def test_an_accepted_greedy_answer_is_returned_and_nothing_more_is_spent(gen):
    p = ARITH.problems("test", 2, 1)[0]
    greedy = solve(p, ARITH, gen, "greedy", {"max_tokens": 24})
    verifier = FixedVerdict(0.9)
    sol = solve(p, ARITH, gen, "cascade", {"max_tokens": 24, "n": 4, "threshold": 0.5}, verifier)
    assert (sol.answer, sol.text) == (greedy.answer, greedy.text)
    assert len(sol.candidates) == 1 and verifier.calls == 1
    c, g = sol.cost, greedy.cost  # the same tokens (the engine's prefix cache may serve the prompt)
    assert c.policy_completion_tokens == g.policy_completion_tokens
    assert c.policy_tokens + c.policy_cached_tokens == g.policy_tokens + g.policy_cached_tokens
    assert sol.params["escalated"] is False and sol.params["threshold"] == 0.5


def test_a_flagged_answer_escalates_to_a_vote_with_the_greedy_chain(gen):
    p = ARITH.problems("test", 2, 1)[0]
    greedy = solve(p, ARITH, gen, "greedy", {"max_tokens": 24})
    sol = solve(p, ARITH, gen, "cascade", {"max_tokens": 24, "n": 3, "threshold": 0.5},
                FixedVerdict(0.1))
    assert sol.params["escalated"] is True and sol.params["escalation_samples"] == 3
    assert len(sol.candidates) == 4 and sol.candidates[0].text == greedy.text
    chosen = vote(ARITH, sol.candidates)
    assert sol.answer == (sol.candidates[chosen].answer if chosen is not None else None)
    assert sol.cost.policy_completion_tokens > greedy.cost.policy_completion_tokens


def test_the_cascade_never_spends_more_than_its_budget(gen, prm_dir):
    p = ARITH.problems("test", 3, 1)[0]
    prm = get_scorer("prm", task=ARITH, model=prm_dir)
    params = {"max_tokens": 20, "n": 8, "threshold": 1.1, "escalate": "best_of_n"}  # always flagged
    floor = policy_bound(gen, p.prompt, 1, 20) + verifier_bound(prm)
    full = floor + policy_bound(gen, p.prompt, 8, 20) + 8 * verifier_bound(prm)
    drawn = []
    for budget in (floor, floor * 1.5, floor * 3, full):
        sol = solve(p, ARITH, gen, "cascade", {**params, "max_flops": budget}, prm)
        assert sol.cost.flops <= budget
        assert sol.cost.verifier_flops > 0  # the learned verifier's compute is counted
        drawn.append(sol.params["escalation_samples"])
    assert drawn[0] == 0 and drawn[-1] == 8 and drawn == sorted(drawn)
    with pytest.raises(TTScaleError, match="max_flops=.* is out of range"):
        solve(p, ARITH, gen, "cascade", {**params, "max_flops": floor * 0.9}, prm)


def test_the_threshold_maximises_accuracy_on_calibration_problems():
    scores = [0.9, 0.8, 0.3, 0.2, 0.6]
    greedy_ok = [True, True, False, False, True]
    escalated_ok = [True, False, True, False, False]
    # escalating below 0.6 fixes the 0.3 problem and breaks nothing: accuracy 4/5
    assert best_threshold(scores, greedy_ok, escalated_ok) == (0.6, 0.8)
    assert best_threshold([0.5, 0.5], [True, True], [False, False]) == (0.5, 1.0)  # never escalate


def test_calibration_is_written_read_back_and_refuses_the_test_split(gen, tmp_path):
    oracle = get_scorer("oracle", task=ARITH)
    with pytest.raises(TTScaleError, match="never on the scored test split.*accepted splits: train, heldout"):
        calibrate_cascade(ARITH, gen, oracle, {"n": 2}, level=1, num_problems=2, split="test")
    out = tmp_path / "cascade.json"
    rec = calibrate_cascade(ARITH, gen, oracle, {"n": 2, "max_tokens": 16}, level=1,
                            num_problems=3, split="heldout", out=out)
    assert json.loads(out.read_text())["threshold"] == rec["threshold"] and rec["problems"] == 3
    p = ARITH.problems("test", 1, 1)[0]
    sol = solve(p, ARITH, gen, "cascade", {"n": 2, "max_tokens": 16, "calibration": str(out)}, oracle)
    assert sol.params["threshold"] == rec["threshold"]
    with pytest.raises(TTScaleError, match="is for scorer 'oracle', not 'fixed'"):
        solve(p, ARITH, gen, "cascade", {"calibration": str(out)}, FixedVerdict(1.0))


@pytest.mark.parametrize("kw,msg", [({"escalate": "louder"}, "unknown escalation 'louder'; accepted: majority"),
                                    ({"max_flops": 0}, "max_flops=0 is out of range"),
                                    ({"calibration": "/nope.json"}, "does not exist")])
def test_bad_cascade_parameters_are_one_line_errors(kw, msg):
    with pytest.raises(TTScaleError, match=msg):
        get_params("cascade", kw)


def test_solve_runs_the_cascade_with_the_checker_and_calibration_refuses_test(random_model_dir, tmp_path,
                                                                               monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "solve", "--model", random_model_dir, "--task", "countdown",
                     "--level", "2", "--num-problems", "2", "--strategy", "cascade", "--scorer", "checker",
                     "--n", "2", "--max-tokens", "12", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["strategy"] == "cascade" and res["scorer"] == "checker" and res["num_problems"] == 2
    assert res["params"]["escalated"] in (True, False)
    assert all(r["verifier_cpu_s"] > 0 and r["verifier_flops"] == 0 for r in res["problems"])
    assert res["mean_verifier_cpu_s"] > 0  # the checker is costed at its CPU time, zero FLOPs
    code, _, err = run_cli(monkeypatch, capsys, "calibrate-cascade", "--model", random_model_dir, "--split",
                     "test", "--out", str(tmp_path / "c.json"))
    assert code == 2 and "accepted splits: train, heldout" in err and "\n" not in err


class Recording:
    """The real engine, with the prompts it was asked kept."""

    def __init__(self, engine):
        self.engine, self.prompts = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, requests):
        self.prompts += [r.prompt for r in requests]
        return self.engine.generate(requests)


def test_escalating_to_the_long_mode_asks_one_long_chain(gen):
    p = ARITH.problems("test", 2, 1)[0]
    rec = Recording(gen)
    sol = solve(p, ARITH, rec, "cascade", {"max_tokens": 16, "high_max_tokens": 24, "threshold": 0.5,
                                           "escalate": "high"}, FixedVerdict(0.0))
    assert rec.prompts == [p.prompt, "Think: " + p.prompt[len("Q: "):]]
    assert len(sol.candidates) == 2 and sol.candidates[1].meta["effort"] == "high"
    assert sol.params["escalation_samples"] == 1
