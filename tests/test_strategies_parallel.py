"""Parallel and sequential strategies: selection on hand-built candidates, parameter checking,
and, on the real torch engine, exact cost accounting of every strategy of this module family."""
from __future__ import annotations

import pytest

from ttscale.engine import load_generator
from ttscale.errors import TTScaleError
from ttscale.rewards.judge import JudgeScorer
from ttscale.rewards.oracle import OracleScorer
from ttscale.strategies import get_params, solve
from ttscale.strategies.base import Candidate
from ttscale.strategies.parallel import best_index
from ttscale.strategies.sequential import first_wrong_prefix
from ttscale.strategies.voting import top_two, vote
from ttscale.tasks import get_task
from ttscale.types import Usage

ARITH = get_task("arith")


def _cands(answers, scores=None):
    scores = scores or [None] * len(answers)
    return [Candidate(text=f"A: {a}", answer=a, score=s) for a, s in zip(answers, scores)]


def test_majority_picks_the_most_frequent_answer_grouped_by_answer_key():
    cands = _cands(["7", "5", "07", " 7", None, None, None])
    assert vote(ARITH, cands) == 0  # 7, 07 and " 7" are one answer for arith; None never votes
    assert top_two(ARITH, cands) == (3, 1)


def test_ties_go_to_the_answer_that_appeared_first():
    assert vote(ARITH, _cands(["5", "7", "7", "5"])) == 0
    assert vote(ARITH, _cands(["7", "5", "5", "7"])) == 0
    assert vote(ARITH, _cands([None, None])) is None


def test_weighted_majority_sums_scores_per_answer():
    # 5 is more frequent, but 7's two samples carry more total score.
    cands = _cands(["5", "5", "5", "7", "7"], [0.2, 0.2, 0.2, 0.4, 0.5])
    assert vote(ARITH, cands, [c.score for c in cands]) == 3
    assert vote(ARITH, cands) == 0


def test_best_of_n_picks_the_highest_score_earliest_on_ties():
    assert best_index(_cands(["1", "2", "3"], [0.1, 0.9, 0.9])) == 1
    assert best_index([]) is None


def test_refinement_keeps_the_steps_before_the_first_wrong_one():
    text = "=3+8-5\n=12-5\n=7\nA: 7\n"
    assert first_wrong_prefix(text, [1.0, 0.0, 0.0, 0.0], 0.5) == "=3+8-5\n"
    assert first_wrong_prefix(text, [0.0, 0.0, 0.0, 0.0], 0.5) == ""
    assert first_wrong_prefix(text, None, 0.5) == ""  # no step located: start over


@pytest.mark.parametrize("strategy,kw,msg", [
    ("nope", {}, "unknown strategy 'nope'; accepted: adaptive_consistency"),
    ("majority", {"n": 0}, "n=0 is out of range"),
    ("majority", {"widht": 2}, "unknown parameter for majority 'widht'; accepted:"),
    ("esc", {"n": 4, "window": 5}, "window=5 is out of range; accepted: 1 <= window <= n=4"),
    ("deepconf", {"n": 4, "warmup": 8}, "warmup=8 is out of range"),
    ("adaptive_consistency", {"threshold": 1.5}, "threshold=1.5 is out of range"),
    ("greedy", {"temperature": -1}, "temperature=-1 is out of range"),
    ("majority", {"n": "many"}, "majority parameter n='many' is not a int"),
    ("self_refine", {"feedback": "friend"}, "feedback='friend' is out of range"),
])
def test_bad_parameters_are_one_line_errors(strategy, kw, msg):
    with pytest.raises(TTScaleError, match=msg.replace("(", r"\(").replace("[", r"\[")) as e:
        get_params(strategy, **kw)
    assert "\n" not in str(e.value)


def test_parameters_given_as_text_are_converted():
    p = get_params("esc", {"n": "8", "window": "2", "seed": "none", "temperature": "0.5"})
    assert (p.n, p.window, p.seed, p.temperature) == (8, 2, None, 0.5)


def test_scorer_strategies_refuse_to_run_without_one():
    p = ARITH.problems(level=1, n=1)[0]
    with pytest.raises(TTScaleError, match="best_of_n' needs a scorer"):
        solve(p, ARITH, None, "best_of_n", {"n": 2}, None)


# -- the real engine: every strategy runs, and its Cost is exactly what its calls reported --------
class Recording:
    """A Generator that passes requests to a real engine and keeps the usage it reports."""

    def __init__(self, inner):
        self.inner = inner
        self.model_name, self.shape = inner.model_name, inner.shape
        self.context_length = inner.context_length
        self.usages: list[Usage] = []

    def generate(self, requests):
        results = self.inner.generate(requests)
        self.usages += [r.usage for r in results]
        return results

    def tokenize(self, text):
        return self.inner.tokenize(text)

    def detokenize(self, ids):
        return self.inner.detokenize(ids)


class RecordingScorer:
    """A Scorer that passes to a real scorer and keeps the usage it reports."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.needs_logprobs = getattr(inner, "needs_logprobs", False)
        self.top_logprobs = getattr(inner, "top_logprobs", 0)
        self.usages: list[Usage] = []

    def score(self, problem, solutions, completions=None):
        batch = self.inner.score(problem, solutions, completions)
        self.usages.append(batch.usage)
        return batch


@pytest.fixture(scope="module")
def engine(random_model_dir):
    return load_generator(random_model_dir)


SHORT = {"max_tokens": 4, "seed": 1}
RUNS = [
    ("greedy", None, {}),
    ("best_of_n", "judge", {"n": 2}),
    ("majority", None, {"n": 3}),
    ("weighted_majority", "judge", {"n": 2}),
    ("self_refine", "judge", {"rounds": 1}),
    ("self_refine", None, {"rounds": 1}),
    ("budget_forcing", None, {"min_steps": 1, "max_tokens": 6, "max_waits": 1,
                              "answer_tokens": 2}),
    ("esc", None, {"n": 4, "window": 2}),
    ("adaptive_consistency", None, {"n": 3, "batch": 2}),
    ("deepconf", None, {"n": 3, "warmup": 2, "window": 2, "chunk": 2}),
]


@pytest.mark.parametrize("strategy,scorer,kw", RUNS, ids=[f"{s}-{c}" for s, c, _ in RUNS])
def test_cost_is_exactly_the_sum_of_generator_and_scorer_calls(engine, strategy, scorer, kw):
    gen = Recording(engine)
    judge = JudgeScorer(engine, template="Q: {question}\n{solution}\nOK?", max_tokens=2)
    rec = RecordingScorer(judge) if scorer else None
    p = ARITH.problems(level=1, n=1)[0]
    sol = solve(p, ARITH, gen, strategy, {**SHORT, **kw}, rec)
    assert sol.strategy == strategy and sol.candidates
    assert gen.usages and sol.cost.policy_flops > 0
    assert sol.cost.policy_flops == pytest.approx(sum(u.flops for u in gen.usages), rel=1e-12)
    assert sol.cost.policy_tokens == sum(u.computed_tokens for u in gen.usages)
    assert sol.cost.policy_cached_tokens == sum(u.cached_tokens for u in gen.usages)
    assert sol.cost.policy_completion_tokens == sum(u.completion_tokens for u in gen.usages)
    ver = rec.usages if rec else []
    assert sol.cost.verifier_flops == pytest.approx(sum(u.flops for u in ver), rel=1e-12)
    assert sol.cost.verifier_tokens == sum(u.computed_tokens for u in ver)
    if rec:
        assert sol.cost.verifier_flops > 0  # the judge is a model: its compute is counted
    chosen = [c for c in sol.candidates if c.text == sol.text]
    assert chosen and (sol.answer is None or chosen[0].answer == sol.answer)


def test_best_of_n_with_the_oracle_picks_a_correct_sample_when_there_is_one(engine):
    # A random model never solves arith, so the oracle's choice is checked on what it scored.
    p = ARITH.problems(level=1, n=1)[0]
    sol = solve(p, ARITH, engine, "best_of_n", {"n": 3, "max_tokens": 4}, OracleScorer(ARITH))
    assert len(sol.candidates) == 3 and all(c.score == 0.0 for c in sol.candidates)
    assert sol.text == sol.candidates[0].text  # all tie at 0: the first sample
    assert sol.cost.verifier_flops == 0  # the oracle costs no model compute
