"""Offline selection: every rule at every N equals a brute-force computation over all orderings
of the stored samples; stores are read strictly; the command prints the documented JSON."""
from __future__ import annotations

import itertools
import json
import math
import random
import sys
from collections import Counter
from functools import lru_cache

import pytest
from scipy.integrate import quad
from typer.testing import CliRunner

from ttscale.errors import TTScaleError
from ttscale.eval.select import RULES, load_samples, select_rules


# -- an independent brute force: simulate each rule on every ordering, as an online run would ----
@lru_cache(maxsize=None)
def _p_leader(v1: int, v2: int) -> float:
    def f(x):
        return x ** v1 * (1 - x) ** v2

    return quad(f, 0.5, 1)[0] / quad(f, 0, 1)[0]


def _majority(prefix, preds, correct, weights=None):
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for pos, i in enumerate(prefix):
        if preds[i] is None:
            continue
        totals[preds[i]] = totals.get(preds[i], 0.0) + (1.0 if weights is None else weights[i])
        first.setdefault(preds[i], pos)
    if not totals:
        return 0.0
    best = max(totals.values())
    win = min((a for a in totals if totals[a] == best), key=lambda a: first[a])
    return float(correct[prefix[first[win]]])


def _winner(prefix, preds, weights):
    """The answer the weighted vote over `prefix` picks (ties: the earliest), or None."""
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for pos, i in enumerate(prefix):
        if preds[i] is not None:
            totals[preds[i]] = totals.get(preds[i], 0.0) + weights[i]
            first.setdefault(preds[i], pos)
    if not totals:
        return None
    best = max(totals.values())
    return min((a for a in totals if totals[a] == best), key=lambda a: first[a])


def _brute(rec, N, window=2, threshold=0.95):
    preds, scores = rec["preds"], rec["scores"]
    correct = [p == rec["answer"] for p in preds]
    n = len(preds)
    acc = Counter()
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        prefix = order[:N]
        acc["majority"] += _majority(prefix, preds, correct)
        acc["weighted_majority"] += _majority(prefix, preds, correct, scores)
        best = max(range(N), key=lambda p: (scores[prefix[p]], -p))
        acc["best_of_n"] += correct[prefix[best]]
        drawn: list[int] = []  # ESC
        while len(drawn) < N:
            w = list(prefix[len(drawn): len(drawn) + window])
            drawn += w
            if preds[w[0]] is not None and all(preds[i] == preds[w[0]] for i in w):
                break
        acc["esc"] += _majority(drawn, preds, correct)
        for t in range(1, N + 1):  # Adaptive-Consistency, one sample at a time
            counts = sorted(Counter(preds[i] for i in prefix[:t] if preds[i]).values(),
                            reverse=True) + [0, 0]
            if counts[0] > 0 and _p_leader(counts[0], counts[1]) >= threshold:
                break
        acc["adaptive_consistency"] += _majority(prefix[:t], preds, correct)
        for t in range(1, N + 1):  # confident consistency (confidence 0.9), one at a time
            lead = _winner(prefix[:t], preds, scores)
            if lead is not None and any(preds[i] == lead and scores[i] >= 0.9 for i in prefix[:t]):
                break
            counts = sorted(Counter(preds[i] for i in prefix[:t] if preds[i]).values(),
                            reverse=True) + [0, 0]
            if counts[0] > 0 and _p_leader(counts[0], counts[1]) >= threshold:
                break
        acc["confident_consistency"] += _majority(prefix[:t], preds, correct, scores)
    out = {k: v / len(orders) for k, v in acc.items()}
    subsets = list(itertools.combinations(range(n), N))
    out["pass_at_k"] = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
    return out


def _store(seed: int, problems: int = 3, n: int = 5) -> list[dict]:
    rng = random.Random(seed)
    recs = []
    for j in range(problems):
        preds = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        recs.append({"problem": f"p{j}", "answer": "1",
                     "responses": [f"#### {p}" if p else "no idea" for p in preds],
                     "preds": preds, "scores": [round(rng.random(), 1) for _ in range(n)]})
    return recs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_rule_matches_brute_force_over_all_orderings(seed):
    recs = _store(seed)
    out = select_rules(recs, window=2)
    assert set(out) == set(RULES)
    for N in range(1, 6):
        per = [_brute(r, N) for r in recs]
        for rule in RULES:
            want = sum(p[rule] for p in per) / len(per)
            assert out[rule][str(N)]["mean"] == pytest.approx(want, abs=1e-12), (rule, N)
            lo, hi = out[rule][str(N)]["ci"]
            assert 0.0 <= lo <= want + 1e-12 and want - 1e-12 <= hi <= 1.0


def test_sampled_orderings_estimate_the_exact_values():
    recs = _store(5, problems=4, n=6)
    exact = select_rules(recs)
    sampled = select_rules(recs, exact_limit=1, draws=3000, seed=1)
    for rule in RULES:
        for N in ("1", "3", "6"):
            assert sampled[rule][N]["mean"] == pytest.approx(exact[rule][N]["mean"], abs=0.04)


def test_stopping_rules_report_the_samples_they_drew():
    unanimous = [{"problem": "p", "answer": "1", "responses": ["A: 1"] * 6}]
    out = select_rules(unanimous, window=2)
    assert out["esc"]["6"]["mean_samples"] == 2.0
    assert out["adaptive_consistency"]["6"]["mean_samples"] == 4.0  # P(4 votes to 0) > 0.95
    assert out["majority"]["6"]["mean"] == 1.0


def test_answers_are_extracted_and_graded_when_preds_are_absent():
    rec = {"problem": "p", "answer": "1,000",
           "responses": ["so \\boxed{1000}", "#### 1000", "I am not sure", "A: 999"]}
    out = select_rules([rec])
    assert out["pass_at_k"]["1"]["mean"] == pytest.approx(0.5)  # two of four are right
    assert out["majority"]["4"]["mean"] == 1.0  # the unanswered one never votes


def test_rules_that_need_scores_are_left_out_without_them():
    out = select_rules([{"problem": "p", "answer": "1", "responses": ["A: 1", "A: 2"]}])
    assert set(out) == {"majority", "pass_at_k", "esc", "adaptive_consistency"}
    assert set(out["majority"]) == {"1", "2"}


def test_step_scores_are_aggregated():
    # The right answer's steps: 0.9 then 0.6; the wrong one's: 0.5 then 0.7.
    rec = {"problem": "p", "answer": "1", "responses": ["A: 1", "A: 2"],
           "scores": [[0.9, 0.6], [0.5, 0.7]]}
    picks = {how: select_rules([rec], aggregate=how)["best_of_n"]["2"]["mean"]
             for how in ("last", "min", "prod", "mean")}
    assert picks == {"last": 0.0, "min": 1.0, "prod": 1.0, "mean": 1.0}


def test_a_malformed_line_is_reported_with_its_number(tmp_path):
    good = json.dumps({"problem": "p", "answer": "1", "responses": ["A: 1"]})
    f = tmp_path / "s.jsonl"
    f.write_text(good + "\n{not json\n")
    with pytest.raises(TTScaleError, match=r"s\.jsonl:2: malformed JSON"):
        load_samples(f)
    f.write_text(good + "\n" + good + "\n" + json.dumps({"problem": "p", "answer": "1"}) + "\n")
    with pytest.raises(TTScaleError, match=r":3: missing field 'responses'"):
        load_samples(f)
    bad = {"problem": "p", "answer": "1", "responses": ["a", "b"], "scores": [1.0]}
    f.write_text(json.dumps(bad) + "\n")
    with pytest.raises(TTScaleError, match=r":1: 'scores' must be a list with one entry per"):
        load_samples(f)


def test_select_command_prints_rules_keyed_by_n(tmp_path):
    from ttscale.cli import app

    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _store(0)))
    res = CliRunner().invoke(app, ["select", "--samples", str(f), "--json", "--window", "2"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert list(out) == list(RULES)
    assert set(out["majority"]) == {"1", "2", "3", "4", "5"}
    assert set(out["esc"]["3"]) == {"mean", "ci", "mean_samples"}
    assert math.isclose(out["pass_at_k"]["5"]["mean"],
                        sum(any(p == "1" for p in r["preds"]) for r in _store(0)) / 3)


def test_select_command_exits_2_with_one_line_on_a_bad_store(tmp_path, monkeypatch, capsys):
    from ttscale.cli import main

    f = tmp_path / "s.jsonl"
    f.write_text('{"problem": "p"}\n')
    monkeypatch.setattr(sys, "argv", ["ttscale", "select", "--samples", str(f), "--json"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and ":1: missing field 'answer'" in err
