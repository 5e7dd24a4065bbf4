"""The step-checking PRM: a family LM's gaps to each written token, a fitted head, training,
saving, loading as the `prm` scorer."""
from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from ttscale.cli import app
from ttscale.errors import TTScaleError
from ttscale.rewards import get_scorer
from ttscale.rewards.lm_check import LMStepChecker, fit_head, step_spans
from ttscale.tasks import get_task
from ttscale.tasks.effort import apply_effort
from ttscale.train.prm import PRMConfig

from cli_helpers import run_cli

ARITH = get_task("arith")


@pytest.fixture(scope="module")
def checker():
    return LMStepChecker("ttscale-small-long")


def _long_problem_and_solution(seed: int = 3):
    p = apply_effort(ARITH.problems("test", 3, 1, seed=seed)[0], "high")
    return p, ARITH.long_solution(p, random.Random(seed))


def _corrupt_first_digit_result(solution: str) -> tuple[str, int]:
    """The solution with the result of its first one-digit product changed, and that step."""
    lines = solution.split("\n")
    for i, line in enumerate(lines):
        left, _, right = line.partition("=")
        if "*" in left and len(left) == 3 and right.isdigit():
            lines[i] = f"{left}={(int(right) + 3) % 10 if len(right) == 1 else int(right) + 3}"
            return "\n".join(lines), i
    raise AssertionError("no one-digit product in the long solution")


def test_steps_are_the_tasks_steps():
    text = "1+2=3\n\n=3+4\nA: 7\n"
    spans = step_spans(text)
    assert [text[a:b].strip() for a, b in spans] == ARITH.split_steps(text)


def test_a_wrong_digit_is_flagged_at_its_step_and_after(checker):
    p, right = _long_problem_and_solution()
    wrong, k = _corrupt_first_digit_result(right)
    assert ARITH.check_steps(p, ARITH.split_steps(wrong))[k] is False
    (good, bad), usage = checker.step_scores([p.prompt, p.prompt], [right, wrong])
    assert len(bad) == len(ARITH.split_steps(wrong))
    # step scores only fall (a step after an error cannot rescue the solution)
    assert all(a >= b for a, b in zip(bad, bad[1:]))
    assert bad[k] < 0.1 < good[k] and bad[k - 1] == pytest.approx(good[k - 1])
    assert min(good) > bad[-1]
    assert usage.flops > 0 and usage.prompt_tokens > len(right)


def test_an_empty_solution_scores_lowest_and_does_not_break_the_batch(checker):
    p, right = _long_problem_and_solution()
    batch = checker.score(p, [right, ""])
    assert batch.scores[1].steps == [] and batch.scores[1].value == 0.0
    assert batch.scores[0].value > 0.0


def test_the_head_learns_which_steps_are_wrong():
    rng = random.Random(0)
    rows, labels = [], []
    for _ in range(400):
        ok = rng.random() < 0.7
        gap = rng.uniform(-0.5, 0) if ok else rng.uniform(-6, -2)
        rows.append([gap, gap / 2, rng.uniform(-1, 0)])
        labels.append(1.0 if ok else 0.0)
    head, loss = fit_head(rows, labels)
    assert 0 < loss < 0.69  # below chance cross-entropy
    assert head["weights"][0] + head["weights"][1] / 2 > 0  # a larger gap means a wronger step
    c = LMStepChecker.__new__(LMStepChecker)
    c.head = head
    assert c.step_score([-0.1, -0.05, -0.5]) > 0.9 > 0.1 > c.step_score([-5.0, -2.5, -0.5])
    with pytest.raises(TTScaleError):
        fit_head([], [])


def test_a_head_on_the_smallest_gap_alone_keeps_the_raw_ranking():
    rng = random.Random(1)
    rows = [[rng.uniform(-6, 0), rng.uniform(-3, 0), rng.uniform(-2, 0)] for _ in range(300)]
    # labels that the other two features predict better: the head must still read only min_gap
    labels = [1.0 if r[0] > -3 and r[2] > -1.5 else 0.0 for r in rows]
    head, _ = fit_head(rows, labels, features=("min_gap",))
    assert head["features"] == ["min_gap"] and len(head["weights"]) == 1
    c = LMStepChecker.__new__(LMStepChecker)
    c.head = head
    scores = [c.step_score(r) for r in rows]
    by_gap = sorted(range(len(rows)), key=lambda i: rows[i][0])
    assert all(scores[i] < scores[j] for i, j in zip(by_gap, by_gap[1:]))
    # a row's other features do not move its score
    assert c.step_score([-1.0, -3.0, -2.0]) == c.step_score([-1.0, 0.0, 0.0])
    with pytest.raises(TTScaleError, match="mean_gap"):
        fit_head(rows, labels, features=("max_gap",))
    with pytest.raises(TTScaleError, match="min_gap"):
        PRMConfig(reader="lm-check", head_features=["min_gap", "min_gap"])


def test_train_saves_a_checker_that_loads_as_the_prm_scorer(tmp_path):
    out = tmp_path / "prm-check"
    result = CliRunner().invoke(app, [
        "train", "prm", "--out", str(out), "--reader", "lm-check", "--checker",
        "ttscale-small-long", "--policy", "ttscale-small", "--effort", "high", "--task", "arith",
        "--level", "2", "--problems", "3", "--samples", "2", "--heldout-problems", "2",
        "--heldout-samples", "2", "--max-tokens", "384", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "config.json").read_text())["ttscale"]
    assert meta["kind"] == "prm" and meta["reader"] == "lm-check"
    assert meta["checker"] == "ttscale-small-long" and len(meta["lm_check_head"]["weights"]) == 3
    scorer = get_scorer("prm", task=ARITH, model=str(out))
    assert isinstance(scorer, LMStepChecker) and scorer.head == meta["lm_check_head"]
    p, right = _long_problem_and_solution(5)
    wrong, _ = _corrupt_first_digit_result(right)
    batch = scorer.score(p, [right, wrong])
    assert batch.scores[0].value > batch.scores[1].value
    assert (out / "README.md").read_text().count("lm-check") >= 1


def test_bad_reader_settings_are_clear_errors(monkeypatch, capsys):
    with pytest.raises(TTScaleError, match="reader"):
        PRMConfig(reader="bogus")
    with pytest.raises(TTScaleError, match="--kind prm"):
        PRMConfig(reader="lm-check", kind="orm")
    code, _, err = run_cli(monkeypatch, capsys, "train", "prm", "--out", "x", "--reader", "nope")
    assert code == 2 and "nope" in err and "lm-check" in err and len(err.splitlines()) == 1


def test_the_older_countdown_notation_is_read_in_todays():
    from ttscale.tasks.long_countdown import current_notation

    countdown = get_task("countdown")
    p = apply_effort(countdown.problems("test", 3, 1, seed=0)[0], "high")
    old = "12*2=24 left 24 10\n24+10=34 != 122\nback 2 10 12\n12*10=120 == 122\nA: 12*10\n"
    new = current_notation(old)
    lines = new.splitlines()
    assert lines[1] == "24+10=34 vs 122 no" and lines[3] == "12*10=120 vs 122 yes"
    assert [ln for i, ln in enumerate(new.splitlines()) if i not in (1, 3)] == \
        [ln for i, ln in enumerate(old.splitlines()) if i not in (1, 3)]
    assert countdown.check_steps(p, countdown.split_steps(new)) == \
        countdown.check_steps(p, countdown.split_steps(old))
    assert current_notation("41*60=2460\n=2460+19\nA: 2479\n") == "41*60=2460\n=2460+19\nA: 2479\n"
