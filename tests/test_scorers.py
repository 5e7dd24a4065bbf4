"""Scorers: the oracle's exact verdicts, self-certainty's formula, the judge's parsing and cost,
step aggregation, and scorer lookup errors."""
from __future__ import annotations

import math

import pytest

from ttscale.engine import load_generator
from ttscale.errors import TTScaleError
from ttscale.rewards import get_scorer
from ttscale.rewards.aggregate import aggregate
from ttscale.rewards.judge import JudgeScorer, parse_verdict
from ttscale.rewards.oracle import OracleScorer
from ttscale.rewards.self_certainty import SelfCertaintyScorer, token_self_certainty
from ttscale.strategies.base import Meter
from ttscale.tasks import get_task
from ttscale.types import Completion, GenerationRequest, SamplingParams

ARITH, COUNTDOWN = get_task("arith"), get_task("countdown")


def test_aggregations():
    steps = [0.9, 0.5, 0.8]
    assert aggregate(steps, "last") == 0.8
    assert aggregate(steps, "min") == 0.5
    assert aggregate(steps, "prod") == pytest.approx(0.36)
    assert aggregate(steps, "mean") == pytest.approx(2.2 / 3)
    assert aggregate([], "min") == 0.0
    with pytest.raises(TTScaleError, match="unknown aggregate 'max'; accepted: last, min, prod"):
        aggregate(steps, "max")


def test_oracle_scores_the_reference_solution_right_at_every_step():
    p = ARITH.problems(level=3, n=1)[0]
    s = OracleScorer(ARITH).score(p, [p.solution]).scores[0]
    assert s.value == 1.0 and s.steps == [1.0] * len(ARITH.split_steps(p.solution))


def test_oracle_marks_every_step_from_the_first_wrong_one():
    p = ARITH.problems(level=3, n=1)[0]
    lines = p.solution.splitlines()
    text = "\n".join([lines[0], "=999", *lines[2:]]) + "\n"  # a wrong step, the right answer
    s = OracleScorer(ARITH, aggregate="mean").score(p, [text]).scores[0]
    assert s.steps == [1.0] + [0.0] * (len(lines) - 1)
    assert s.value == 1.0  # complete: the final answer decides, whatever the aggregation
    wrong_answer = p.solution.replace(f"A: {p.answer}", f"A: {int(p.answer) + 1}")
    s = OracleScorer(ARITH).score(p, [wrong_answer]).scores[0]
    assert s.value == 0.0 and s.steps[-1] == 0.0 and s.steps[0] == 1.0


def test_oracle_scores_partial_solutions_by_their_steps():
    p = COUNTDOWN.problems(level=2, n=1)[0]
    first = p.solution.splitlines()[0] + "\n"  # one right step, no answer yet
    for how in ("last", "min", "prod", "mean"):
        assert OracleScorer(COUNTDOWN, how).score(p, [first]).scores[0].value == 1.0
    bad = OracleScorer(COUNTDOWN, "mean").score(p, [first + "1+1=3\n"]).scores[0]
    assert bad.steps == [1.0, 0.0] and bad.value == 0.5


def _kl_uniform(probs):
    v = len(probs)
    return sum((1 / v) * math.log((1 / v) / q) for q in probs)


def test_self_certainty_is_kl_from_uniform():
    probs = [0.5, 0.2, 0.15, 0.1, 0.05]
    lps = [math.log(q) for q in probs]
    assert token_self_certainty(lps, vocab_size=5) == pytest.approx(_kl_uniform(probs))
    assert token_self_certainty(lps, vocab_size=None) == pytest.approx(_kl_uniform(probs))
    # top-3 of a distribution whose other 7 tokens share the rest evenly: exact as well
    tail = [0.05 / 7] * 7
    full = [0.6, 0.25, 0.1] + tail
    assert token_self_certainty([math.log(q) for q in full[:3]], vocab_size=10) == \
        pytest.approx(_kl_uniform(full))


def test_self_certainty_ranks_confident_completions_higher():
    sure = Completion("A: 5", [1, 2, 3, 4], "stop", [-0.01] * 4,
                      [{"a": -0.01, "b": -5.0, "c": -6.0}] * 4)
    unsure = Completion("A: 6", [1, 2, 3, 4], "stop", [-1.2] * 4,
                        [{"a": -1.2, "b": -1.3, "c": -1.4}] * 4)
    p = ARITH.problems(level=1, n=1)[0]
    scores = SelfCertaintyScorer(vocab_size=100).score(p, ["A: 5", "A: 6"], [sure, unsure])
    assert scores.scores[0].value > scores.scores[1].value > 0
    with pytest.raises(TTScaleError, match="needs the policy's logprobs"):
        SelfCertaintyScorer().score(p, ["x"], [Completion("x", [1], "stop")])
    with pytest.raises(TTScaleError, match="own completions"):
        SelfCertaintyScorer().score(p, ["x"], None)


@pytest.mark.parametrize("text,value", [
    (" yes", 1.0), (" No, it is wrong", 0.0), (" 7/10", 0.7), (" 10", 1.0), (" Correct.", 1.0),
    (" hmm", None),
])
def test_judge_verdicts(text, value):
    assert parse_verdict(text) == value


@pytest.fixture(scope="module")
def engine(random_model_dir):
    return load_generator(random_model_dir)


def test_judge_and_self_certainty_on_the_torch_engine(engine):
    p = ARITH.problems(level=1, n=1)[0]
    meter = Meter()
    judge = JudgeScorer(engine, template="{solution} ok?", max_tokens=2)
    batch = meter.score(judge, p, [p.solution, "A: 0\n"])
    assert all(0.0 <= s.value <= 1.0 for s in batch.scores)
    assert meter.cost.verifier_flops == batch.usage.flops > 0  # the judge's compute is counted
    assert meter.cost.policy_flops == 0
    sc = get_scorer("self-certainty", generator=engine)
    assert sc.vocab_size == engine.cfg.vocab_size
    res = engine.generate([GenerationRequest(p.prompt, SamplingParams(
        n=2, max_tokens=4, seed=0, logprobs=True, top_logprobs=sc.top_logprobs))])[0]
    values = [s.value for s in sc.score(p, [c.text for c in res.completions],
                                        res.completions).scores]
    assert all(v >= 0 and math.isfinite(v) for v in values)


def test_scorer_lookup_errors(tmp_path, monkeypatch):
    with pytest.raises(TTScaleError, match="unknown scorer 'prn'; accepted: oracle, prm, orm"):
        get_scorer("prn", task=ARITH)
    with pytest.raises(TTScaleError, match="oracle scorer needs a task"):
        get_scorer("oracle")
    with pytest.raises(TTScaleError, match="unknown aggregate"):
        get_scorer("oracle", task=ARITH, aggregate="median")
    monkeypatch.setenv("TTSCALE_MODELS_DIR", str(tmp_path))
    with pytest.raises(TTScaleError, match="no PRM model given .* `ttscale train prm`"):
        get_scorer("prm", task=ARITH)
    with pytest.raises(TTScaleError, match="judge scorer needs a model or a generator"):
        get_scorer("judge")


def _expressions(numbers):
    """Every `(x o y) o z` and `x o (y o z)` over orderings of three numbers, with its exact value
    computed here (Fractions), plus copies that drop or repeat a number."""
    import itertools
    from fractions import Fraction

    def ap(a, op, b):
        if op == "/" and b == 0:
            return None
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if op == "/" else None}[op]

    out = []
    for x, y, z in itertools.permutations(numbers):
        for o1, o2 in itertools.product("+-*/", repeat=2):
            fx, fy, fz = Fraction(x), Fraction(y), Fraction(z)
            left = ap(fx, o1, fy)
            out.append((f"({x}{o1}{y}){o2}{z}", None if left is None else ap(left, o2, fz), True))
            right = ap(fy, o2, fz)
            out.append((f"{x}{o1}({y}{o2}{z})", None if right is None else ap(fx, o1, right), True))
        out.append((f"{x}+{y}", Fraction(x + y), False))  # a number left out
        out.append((f"{x}+{y}+{z}+{x}", Fraction(2 * x + y + z), False))  # a number used twice
    return out


def test_checker_accepts_exactly_the_valid_countdown_expressions():
    from dataclasses import replace

    from ttscale.rewards.checker import CheckerScorer

    checker = get_scorer("checker", task=COUNTDOWN)
    assert isinstance(checker, CheckerScorer)
    accepted = rejected = 0
    for p in COUNTDOWN.problems("test", level=3, n=4):
        target = p.meta["target"]
        exprs = _expressions(p.meta["numbers"]) + [("__import__('os')", None, False), ("", None, False)]
        texts = [f"A: {e}\n" for e, _, _ in exprs]
        # the reference is never read: a problem whose stated answer is wrong gets the same verdicts
        for problem in (p, replace(p, answer="-1", solution="A: 0\n")):
            got = [s.value for s in checker.score(problem, texts).scores]
            want = [1.0 if ok and v is not None and v == target else 0.0 for _, v, ok in exprs]
            assert got == want
        accepted += sum(want)
        rejected += len(want) - sum(want)
        assert checker.score(p, [p.solution]).scores[0].value == 1.0
    assert accepted >= 4 and rejected > 100  # both sides were exercised


def test_checker_costs_cpu_time_and_no_model_compute():
    p = COUNTDOWN.problems("test", level=2, n=1)[0]
    meter = Meter()
    batch = meter.score(get_scorer("checker", task=COUNTDOWN), p, [p.solution] * 50)
    assert batch.usage.flops == 0 and batch.usage.computed_tokens == 0 and batch.usage.cpu_s > 0
    assert meter.cost.verifier_cpu_s == batch.usage.cpu_s and meter.cost.flops == 0


def test_checker_refuses_tasks_whose_answer_needs_a_reference(random_model_dir, monkeypatch, capsys):
    from cli_helpers import run_cli

    with pytest.raises(TTScaleError, match="cannot check task 'arith'.*accepted tasks: countdown$"):
        get_scorer("checker", task=ARITH)
    code, _, err = run_cli(monkeypatch, capsys, "solve", "--model", random_model_dir, "--task",
                           "arith", "--strategy", "best_of_n", "--scorer", "checker")
    assert code == 2 and "accepted tasks: countdown" in err and "\n" not in err


def test_likelihood_is_the_geometric_mean_token_probability():
    from ttscale.rewards.likelihood import LikelihoodScorer

    p = ARITH.problems(level=1, n=1)[0]
    sure = Completion("A: 7\n", [1, 2, 3], "stop", logprobs=[math.log(0.9)] * 3)
    slip = Completion("A: 8\n", [1, 2, 3], "stop", logprobs=[math.log(0.9), math.log(0.01), math.log(0.9)])
    empty = Completion("", [], "length", logprobs=[])
    values = [s.value for s in LikelihoodScorer().score(p, ["A: 7\n", "A: 8\n", ""], [sure, slip, empty]).scores]
    assert values[0] == pytest.approx(0.9)
    assert values[1] == pytest.approx((0.9 * 0.01 * 0.9) ** (1 / 3))
    assert values[2] == 0.0  # an empty solution is never the most likely one
    with pytest.raises(TTScaleError, match="needs the policy's logprobs"):
        LikelihoodScorer().score(p, ["A: 7\n"], [Completion("A: 7\n", [1], "stop")])
    with pytest.raises(TTScaleError, match="pass them with their logprobs"):
        LikelihoodScorer().score(p, ["A: 7\n"])


def test_likelihood_is_the_models_own_probability_of_its_sample(engine, random_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from ttscale.strategies import solve

    p = ARITH.problems(level=1, n=1)[0]
    scorer = get_scorer("likelihood")
    sol = solve(p, ARITH, engine, "best_of_n", {"n": 4, "max_tokens": 6, "seed": 1}, scorer)
    assert sol.cost.verifier_flops == 0  # the logprobs come with the samples
    assert sol.text == max(sol.candidates, key=lambda c: c.score).text
    # the score is the model's likelihood of the sampled tokens, recomputed here by transformers
    res = engine.generate([GenerationRequest(p.prompt, SamplingParams(n=3, max_tokens=6, seed=2,
                                                                      temperature=0.7, logprobs=True))])[0]
    values = [s.value for s in scorer.score(p, [c.text for c in res.completions], res.completions).scores]
    model = AutoModelForCausalLM.from_pretrained(random_model_dir).eval()
    prompt = engine.tokenize(p.prompt)
    for c, v in zip(res.completions, values):
        full = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(full).logits[0, :-1].float(), -1)
        picked = lp[torch.arange(full.shape[1] - 1), full[0, 1:]][len(prompt) - 1:]
        assert v == pytest.approx(math.exp(picked.mean().item()), rel=1e-3)  # untempered, T=0.7
