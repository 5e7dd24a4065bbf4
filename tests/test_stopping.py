"""Adaptive stopping: ESC, Adaptive-Consistency and DeepConf stop on agreement, continue on
disagreement, and follow their formulas.

The strategies run on a generator that replays scripted traces (the answers must be known in
advance to test when sampling stops); it honours the Generator protocol, including chunked
continuation of a partial trace and per-token logprobs, so the strategies run unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from scipy.integrate import quad

from ttscale.engine.flops import ModelShape
from ttscale.strategies import solve
from ttscale.strategies.stopping import (adaptive_should_stop, beta_stop_probability,
                                         esc_should_stop, lowest_group_confidence)
from ttscale.tasks import get_task
from ttscale.types import Completion, GenerationResult, Problem, Usage

ARITH = get_task("arith")
PROBLEM = Problem(id="t", task="arith", level=1, question="2+3", prompt="Q: 2+3\n", answer="5")
CONFIDENT = {"x": -0.01, "y": -6.0, "z": -7.0}  # token confidence 4.34
UNSURE = {"x": -1.0, "y": -1.1, "z": -1.2}  # token confidence 1.1


@dataclass
class Traces:
    """Replays `texts` in order: a request at the bare prompt starts the next traces; a request
    whose prompt extends a started trace continues it. One token per character."""

    texts: list[str]
    tops: list[dict[str, float]] | None = None  # per trace: the top logprobs of every token
    model_name: str = "traces"
    shape: ModelShape = ModelShape(n_params=1000, n_layer=2, d_model=8)
    context_length: int = 512
    started: list[int] = field(default_factory=list)
    generated: dict[int, int] = field(default_factory=dict)  # trace -> tokens handed out

    def generate(self, requests):
        out = []
        for r in requests:
            p = r.params
            if r.prompt == PROBLEM.prompt:
                idx = list(range(len(self.started), len(self.started) + p.n))
                self.started += idx
                done = [""] * p.n
            else:
                partial = r.prompt[len(PROBLEM.prompt):]
                i = next(i for i in self.started if self.texts[i].startswith(partial)
                         and self.generated.get(i) == len(partial))
                idx, done = [i], [partial]
            comps = []
            for i, before in zip(idx, done):
                rest = self.texts[i][len(before):]
                piece = rest[:p.max_tokens]
                self.generated[i] = len(before) + len(piece)
                top = self.tops[i] if self.tops else {"x": -0.5}
                comps.append(Completion(piece, [ord(c) for c in piece],
                                        "stop" if len(piece) == len(rest) else "length",
                                        [max(top.values())] * len(piece),
                                        [dict(top) for _ in piece] if p.top_logprobs else None))
            n_new = sum(len(c.text) for c in comps)
            out.append(GenerationResult(comps, Usage(len(r.prompt), 0, n_new,
                                                     self.shape.span_flops(0, n_new))))
        return out

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(map(chr, ids))


def _answers(*answers: str) -> list[str]:
    return [f"=5\nA: {a}\n" for a in answers]


# -- the rules themselves -------------------------------------------------------------------
def test_esc_window_rule():
    assert esc_should_stop(["5", "5", "5"])
    assert not esc_should_stop(["5", "5", "6"])
    assert not esc_should_stop([None, None])  # no answer is no agreement
    assert not esc_should_stop([])


@pytest.mark.parametrize("v1,v2", [(1, 0), (3, 0), (4, 0), (5, 2), (8, 3), (10, 9), (2, 2)])
def test_beta_rule_matches_the_integral(v1, v2):
    def f(x):
        return x ** v1 * (1 - x) ** v2

    expected = quad(f, 0.5, 1)[0] / quad(f, 0, 1)[0]
    assert beta_stop_probability(v1, v2) == pytest.approx(expected, rel=1e-9)
    assert adaptive_should_stop(v1, v2, 0.95) == (expected >= 0.95)


def test_beta_rule_stops_on_four_unanimous_votes_not_three():
    assert not adaptive_should_stop(3, 0) and adaptive_should_stop(4, 0)  # 0.9375 vs 0.96875
    assert not adaptive_should_stop(0, 0)


def test_lowest_group_confidence_is_the_worst_window_mean():
    assert lowest_group_confidence([3, 3, 1, 1, 3], 2) == 1.0
    assert lowest_group_confidence([3, 1], 4) == 2.0  # shorter than a window: whole trace
    assert lowest_group_confidence([3, 1], 4, full_only=True) == float("inf")


# -- the strategies ---------------------------------------------------------------------------
def test_esc_stops_after_one_unanimous_window():
    gen = Traces(_answers(*["5"] * 16))
    sol = solve(PROBLEM, ARITH, gen, "esc", {"n": 16, "window": 4})
    assert len(sol.candidates) == 4 and sol.answer == "5"


def test_esc_continues_while_windows_disagree():
    gen = Traces(_answers(*["5", "6"] * 4, *["6"] * 4, *["5"] * 4))
    sol = solve(PROBLEM, ARITH, gen, "esc", {"n": 16, "window": 4})
    assert len(sol.candidates) == 12  # windows 1-2 split, window 3 unanimous
    assert sol.answer == "6"  # the majority of everything drawn (6: 8 votes, 5: 4)
    split = Traces(_answers(*["5", "6"] * 8))
    assert len(solve(PROBLEM, ARITH, split, "esc", {"n": 16, "window": 4}).candidates) == 16


def test_adaptive_consistency_stops_when_the_beta_rule_fires():
    gen = Traces(_answers(*["5"] * 16))
    sol = solve(PROBLEM, ARITH, gen, "adaptive_consistency", {"n": 16})
    assert len(sol.candidates) == 4 and sol.answer == "5"
    assert sol.params["stop_probability"] == pytest.approx(1 - 0.5 ** 5)


def test_adaptive_consistency_continues_on_split_votes():
    seq = ["5", "6", "5", "6"] + ["5"] * 12
    sol = solve(PROBLEM, ARITH, Traces(_answers(*seq)), "adaptive_consistency", {"n": 16})
    # the first prefix where the integral of the formula reaches 0.95, computed independently
    for t in range(1, len(seq) + 1):
        v1, v2 = sorted((seq[:t].count("5"), seq[:t].count("6")), reverse=True)
        num = quad(lambda x: x ** v1 * (1 - x) ** v2, 0.5, 1)[0]
        if num / quad(lambda x: x ** v1 * (1 - x) ** v2, 0, 1)[0] >= 0.95:
            break
    assert len(sol.candidates) == t < len(seq)
    split = Traces(_answers(*["5", "6"] * 5))
    assert len(solve(PROBLEM, ARITH, split, "adaptive_consistency", {"n": 10}).candidates) == 10


def test_deepconf_terminates_unsure_traces_early_and_votes_with_the_confident_ones():
    texts = _answers("5", "5", "6", "6", "6", "6")
    tops = [CONFIDENT, CONFIDENT, UNSURE, UNSURE, UNSURE, UNSURE]
    gen = Traces(texts, tops)
    sol = solve(PROBLEM, ARITH, gen, "deepconf",
                {"n": 6, "warmup": 2, "window": 4, "chunk": 4, "percentile": 10})
    assert sol.answer == "5"  # plain majority would say 6
    later = sol.candidates[2:]
    assert all(c.meta["terminated"] and not c.meta["kept"] for c in later)
    assert all(gen.generated[i] == 4 < len(texts[i]) for i in range(2, 6))  # cut after a window
    assert sol.params["kept"] == 2


def test_deepconf_keeps_traces_as_confident_as_the_warmup():
    gen = Traces(_answers("5", "6", "6", "6"), [CONFIDENT] * 4)
    sol = solve(PROBLEM, ARITH, gen, "deepconf", {"n": 4, "warmup": 1, "window": 4, "chunk": 3})
    assert sol.answer == "6" and sol.params["kept"] == 4
    assert all(gen.generated[i] == len(gen.texts[i]) for i in range(4))  # completed in chunks


# -- confident consistency ----------------------------------------------------------------------
def test_confident_rule_stops_at_a_confident_sample_of_the_leading_answer():
    from ttscale.strategies.stopping import confident_should_stop

    assert confident_should_stop(["5"], [0.99], confidence=0.95)
    assert not confident_should_stop(["5"], [0.90], confidence=0.95)
    # the confident sample's answer trails the score-weighted vote: no stop yet
    assert not confident_should_stop(["6", "6", "5"], [0.9, 0.9, 0.97], confidence=0.95)
    assert confident_should_stop(["6", "6", "5"], [0.9, 0.96, 0.5], confidence=0.95)
    assert not confident_should_stop([None], [0.99], confidence=0.5)  # no answer, no stop
    # without a confident sample it is Adaptive-Consistency on the plain counts
    assert confident_should_stop(["5"] * 4, [0.1] * 4, confidence=0.95)
    assert not confident_should_stop(["5"] * 3, [0.1] * 3, confidence=0.95)


class FixedScores:
    """Scores each solution by a table of its final answer (a scorer the test controls)."""

    name = "fixed"

    def __init__(self, by_answer: dict[str, float]) -> None:
        self.by_answer = by_answer

    def score(self, problem, solutions, completions=None):
        from ttscale.rewards.base import ScoreBatch, Scored

        return ScoreBatch([Scored(self.by_answer[s.strip().split()[-1]]) for s in solutions],
                          Usage())


def test_confident_consistency_stops_early_and_answers_by_the_weighted_vote():
    seq = ["6", "6", "5", "6", "5"] + ["5"] * 11
    scorer = FixedScores({"5": 0.99, "6": 0.3})
    sol = solve(PROBLEM, ARITH, Traces(_answers(*seq)), "confident_consistency",
                {"n": 16, "confidence": 0.95}, scorer)
    # after 3 samples: 6 weighs 0.6, 5 weighs 0.99 and has a sample scored >= 0.95
    assert len(sol.candidates) == 3 and sol.answer == "5"
    unsure = FixedScores({"5": 0.5, "6": 0.5})
    sol = solve(PROBLEM, ARITH, Traces(_answers(*seq)), "confident_consistency",
                {"n": 16, "confidence": 0.95}, unsure)
    plain = solve(PROBLEM, ARITH, Traces(_answers(*seq)), "adaptive_consistency", {"n": 16})
    assert len(sol.candidates) == len(plain.candidates)  # no confident sample: AC's stop


def test_confident_consistency_offline_selection_equals_the_online_strategy():
    """The sweep scores the rule from stored samples (`planner.samples.select`); it must choose
    what the strategy run on the same samples chooses, and draw as many."""
    from ttscale.planner.samples import SampleSet, select

    scorer = FixedScores({"5": 0.97, "6": 0.9, "7": 0.93})
    rng = __import__("random").Random(3)
    for _ in range(30):
        seq = [rng.choice("5567") for _ in range(8)]
        conf = rng.choice([0.92, 0.95, 0.99])
        sol = solve(PROBLEM, ARITH, Traces(_answers(*seq)), "confident_consistency",
                    {"n": 8, "confidence": conf}, scorer)
        ss = SampleSet(answers=seq, keys=seq, correct=[a == "5" for a in seq],
                       scores=[scorer.by_answer[a] for a in seq], texts=_answers(*seq),
                       completion_tokens=[5] * 8, sample_flops=[1.0] * 8)
        got = select("confident_consistency", ARITH, ss, 8, confidence=conf)
        assert (got.used, got.answer) == (len(sol.candidates), sol.answer), (seq, conf)


def test_confident_consistency_needs_a_scorer_and_a_numeric_confidence():
    with pytest.raises(Exception, match="needs a scorer"):
        solve(PROBLEM, ARITH, Traces(_answers("5")), "confident_consistency", {"n": 2})
    with pytest.raises(Exception, match="confidence"):
        solve(PROBLEM, ARITH, Traces(_answers("5")), "confident_consistency",
              {"n": 2, "confidence": float("nan")}, FixedScores({"5": 1.0}))
