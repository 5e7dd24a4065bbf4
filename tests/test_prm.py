"""The learned PRM/ORM: Math-Shepherd labels, training, evaluation, saving and scoring."""
from __future__ import annotations

import json
import math

import pytest

from ttscale.errors import TTScaleError
from ttscale.models.tokenizer import build_tokenizer
from ttscale.rewards.aggregate import aggregate
from ttscale.rewards.prm import LearnedPRM, encode_for_reward
from ttscale.tasks import get_task
from ttscale.train.prm import (LabelledSolution, PRMConfig, build_model, first_wrong, label_solutions,
                               math_shepherd_label, processbench_f1, quality_by_task, train_prm,
                               train_reward_model)

from test_tree_search import ScriptedGenerator, _problem

ARITH = get_task("arith")


def test_math_shepherd_label_is_the_fraction_of_rollouts_that_reach_the_answer():
    assert math_shepherd_label([True, False, False, True]) == 0.5
    assert math_shepherd_label([True, False, False, False], hard=True) == 1.0
    assert math_shepherd_label([False, False], hard=True) == 0.0
    with pytest.raises(TTScaleError):
        math_shepherd_label([])


def test_step_labels_come_from_rollouts_after_each_step():
    p = _problem("1+2+3", "6")
    # Hand-made rollouts: after "=3+3" three of four reach 6; after the wrong "=7" none can.
    script = {"=3+3\n": ["=6\nA: 6", "=7\nA: 7", "=6\nA: 6", "=6\nA: 6"],
              "=3+3\n=7\n": ["A: 7", "A: 6 is not what I get", "A: 7", "A: 8"]}
    gen = ScriptedGenerator(p.prompt, script)
    cfg = PRMConfig(tasks=["arith"], rollouts=4, labels="mc")
    [soft] = label_solutions(gen, ARITH, [(p, "=3+3\n=7\nA: 7\n")], cfg, seed=0)
    assert soft.labels == [0.75, 0.0, 0.0]  # the answer step is labelled by the exact check
    assert soft.oracle == [True, False, False] and not soft.correct
    assert all(r.params.n == 4 and r.params.stop == [] for r in gen.requests)
    [hard] = label_solutions(gen, ARITH, [(p, "=3+3\n=7\nA: 7\n")],
                             PRMConfig(tasks=["arith"], label="hard", labels="mc"), 0)
    assert hard.labels == [1.0, 0.0, 0.0]
    orm = label_solutions(gen, ARITH, [(p, "=3+3\n=6\nA: 6\n")], PRMConfig(tasks=["arith"], kind="orm"), 0)
    assert orm[0].labels == [1.0]


def test_oracle_labels_mark_every_step_from_the_first_wrong_one_without_rollouts():
    p = _problem("1+2+3", "6")
    gen = ScriptedGenerator(p.prompt, {})  # any rollout request would be recorded
    cfg = PRMConfig(tasks=["arith"])
    assert cfg.labels == "oracle"
    texts = ["=3+3\n=6\nA: 6\n", "=3+3\n=7\nA: 7\n", "=4+3\n=7\nA: 7\n", "=3+3\n=6\nA: 5\n"]
    got = label_solutions(gen, ARITH, [(p, t) for t in texts], cfg, seed=0)
    assert [first_wrong([y == 1.0 for y in d.labels]) for d in got] == [-1, 1, 0, 2]
    assert [d.labels for d in got] == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert gen.requests == []
    countdown = get_task("countdown")
    q = countdown.problems("train", 2, 1)[0]
    steps = countdown.split_steps(q.solution)
    bad = steps[0].split("=")[0] + "=" + str(int(steps[0].split("=")[1]) + 1)
    [ok, wrong] = label_solutions(gen, countdown, [(q, q.solution), (q, "\n".join([bad, *steps[1:]]))], cfg, 0)
    assert ok.labels == [1.0] * len(steps) and wrong.labels == [0.0] * len(steps)


def test_processbench_f1_matches_its_definition():
    gold = [first_wrong(v) for v in ([True, False, False], [True, True], [False], [True, True])]
    assert gold == [1, -1, 0, -1]
    pred = [1, -1, 1, 0]  # erroneous: 1 of 2 located; correct: 1 of 2 said "no error"
    r = processbench_f1(pred, gold)
    assert (r["error_acc"], r["correct_acc"], r["f1"]) == (0.5, 0.5, 0.5)
    r = processbench_f1([1, -1, 0, -1], gold)
    assert r["f1"] == 1.0


def test_scores_are_read_at_each_steps_delimiter():
    tok = build_tokenizer()
    prompt, sol = "Q: 1+2\n", "=3\n\nA: 3"
    ids, pos = encode_for_reward(tok, prompt, sol)
    text = tok.decode(ids, skip_special_tokens=True)
    assert [text[i - 1] for i in pos] == ["\n", "\n"]  # ids start with BOS: token i is char i-1
    assert text[: pos[0] - 1] == prompt + "=3"


def _labelled(n: int) -> list[LabelledSolution]:
    """Reference solutions (every step right) and copies with a wrong step, labelled by the oracle."""
    out = []
    for i, p in enumerate(ARITH.problems("train", 3, n, seed=1)):
        text = p.solution
        if i % 2:
            steps = ARITH.split_steps(text)
            steps[1] = "=" + str(int(p.answer) + 1)
            text = "".join(s + "\n" for s in steps)
        steps = ARITH.split_steps(text)
        oracle = ARITH.check_steps(p, steps)
        out.append(LabelledSolution(p, text, steps, [float(v) for v in oracle], oracle, ARITH.is_correct(p, text)))
    return out


def test_short_training_lowers_loss_and_saves_a_model_that_scores(random_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from ttscale.train.prm import _examples

    cfg = PRMConfig(policy=random_model_dir, steps=30, batch_size=8, lr=3e-3)
    data = _labelled(8)
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    model = build_model(cfg, random_model_dir)
    examples = _examples(tok, data, "prm", 256, "\n")
    losses = train_reward_model(model, examples, cfg)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3

    model.config.ttscale = {"kind": "prm", "step_delimiter": "\n"}
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg_json = json.loads((tmp_path / "config.json").read_text())
    assert cfg_json["architectures"] == ["LlamaForTokenClassification"] and cfg_json["ttscale"]["kind"] == "prm"

    p = data[0].problem
    sols = [data[0].text, data[1].text, "=1\n", "=1\nA: 1"]
    for how in ("last", "min", "prod", "mean"):
        batch = LearnedPRM(tmp_path, aggregate=how).score(p, sols)
        for sol, s in zip(sols, batch.scores):
            assert len(s.steps) == len(ARITH.split_steps(sol))
            assert math.isclose(s.value, aggregate(s.steps, how), rel_tol=1e-6)
    prm = LearnedPRM(tmp_path)
    batch = prm.score(p, sols)
    lengths = [len(encode_for_reward(prm.tokenizer, p.prompt, s)[0]) for s in sols]
    assert batch.usage.prompt_tokens == sum(lengths) and batch.usage.completion_tokens == 0
    assert batch.usage.flops == sum(prm.shape.span_flops(0, n) for n in lengths)
    orm = LearnedPRM(tmp_path, kind="orm").score(p, sols)
    assert [s.value for s in orm.scores] == [s.steps[-1] for s in orm.scores]


def test_not_a_reward_model_is_a_clear_error(random_model_dir):
    with pytest.raises(TTScaleError, match="not a ttscale reward model"):
        LearnedPRM(random_model_dir)
    with pytest.raises(TTScaleError, match="kind"):
        LearnedPRM(random_model_dir, kind="vrm")


@pytest.mark.parametrize("field,value", [("kind", "vrm"), ("label", "fuzzy"), ("rollouts", 0),
                                         ("samples", 0), ("init", "magic"), ("tasks", ["chess"])])
def test_bad_training_settings_name_the_value(field, value):
    with pytest.raises(TTScaleError, match="accepted") as e:
        PRMConfig(**{field: value})
    assert str(value if not isinstance(value, list) else value[0]) in str(e.value)


def test_train_prm_end_to_end_on_the_torch_engine(random_model_dir, tmp_path, monkeypatch):
    from ttscale.models.registry import list_models

    out = tmp_path / "models" / "ttscale-prm-test"
    cfg = PRMConfig(policy=random_model_dir, tasks=["arith"], levels=[2], problems=2, samples=2,
                    rollouts=2, heldout_problems=2, heldout_samples=3, max_tokens=16, steps=3,
                    batch_size=4, labels="mc")
    summary = train_prm(cfg, out)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "training.json"):
        assert (out / f).exists(), f
    card = (out / "README.md").read_text()
    assert "ProcessBench" in card and "step_accuracy" in card and "within-problem AUROC" in card
    [q] = summary["quality"]
    assert (q["task"], q["level"], q["effort"], q["problems"], q["n"]) == ("arith", 2, "low", 2, 3)
    assert set(summary["metrics"]) >= {"step_accuracy", "processbench_f1", "outcome_accuracy"}
    assert summary["metrics"]["heldout_samples"] > 0
    assert [(t["task"], t["effort"]) for t in summary["quality_by_task"]] == (
        [("arith", "low")] if q["mixed_problems"] else [])
    monkeypatch.setenv("TTSCALE_MODELS_DIR", str(out.parent))
    [info] = list_models()
    assert info.kind == "prm" and info.name == "ttscale-prm-test"


def test_oracle_labels_from_several_policies_and_temperatures(random_model_dir, tmp_path):
    cfg = PRMConfig(policy=random_model_dir, sample_policies=[random_model_dir, random_model_dir],
                    temperatures=[0.7, 1.0], tasks=["countdown"], levels=[2], problems=2, samples=2,
                    heldout_problems=2, heldout_samples=2, max_tokens=12, steps=2, batch_size=4, kind="orm")
    summary = train_prm(cfg, tmp_path / "orm")
    assert summary["labels"]["train_samples"] == 2 * 2 * 2 * 2  # policies x temperatures x problems x samples
    assert summary["kind"] == "orm" and LearnedPRM(tmp_path / "orm", kind="orm").kind == "orm"
    from ttscale.models.registry import model_info

    assert model_info(tmp_path / "orm").kind == "orm"
    with pytest.raises(TTScaleError, match="unknown labels 'exact'; accepted: oracle, mc"):
        PRMConfig(labels="exact")
    with pytest.raises(TTScaleError, match="unknown effort 'max'"):
        PRMConfig(efforts=["max"])


def test_per_task_within_problem_auroc_counts_every_pair_once():
    rows = [{"task": "countdown", "effort": "high", "within_problem_auroc": 1.0, "mixed_problems": 2,
             "pairs": 30},
            {"task": "countdown", "effort": "high", "within_problem_auroc": 0.5, "mixed_problems": 1,
             "pairs": 10},
            {"task": "countdown", "effort": "high", "within_problem_auroc": float("nan"),
             "mixed_problems": 0, "pairs": 0},  # a level with no mixed problem adds nothing
            {"task": "countdown", "effort": "low", "within_problem_auroc": 0.25, "mixed_problems": 1,
             "pairs": 4}]
    high, low = quality_by_task(rows)
    assert (high["task"], high["effort"], high["pairs"], high["mixed_problems"]) == ("countdown", "high", 40, 3)
    assert high["within_problem_auroc"] == pytest.approx((30 * 1.0 + 10 * 0.5) / 40)
    assert (low["effort"], low["within_problem_auroc"]) == ("low", 0.25)
