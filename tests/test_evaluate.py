"""The family's yardstick: greedy, maj@n, pass@n and pass@k from one batched call."""
import json

from cli_helpers import run_cli

from ttscale.engine.torch_engine import TorchEngine
from ttscale.eval.evaluate import evaluate, pass_at_k
from ttscale.models.registry import resolve_model
from ttscale.tasks import get_task


def test_pass_at_k_is_the_unbiased_estimate_and_reaches_pass_at_n():
    task = get_task("countdown")
    r = evaluate(TorchEngine(resolve_model("ttscale-tiny")), task, task.problems("test", 2, 12), n=4)
    assert sorted(r.pass_at_k) == [1, 2, 4]
    assert r.pass_at_k[4] == r.pass_at_n  # k = n: some sample right
    assert r.pass_at_k[1] <= r.pass_at_k[2] <= r.pass_at_k[4]
    assert 0 < r.pass_at_k[1] < r.pass_at_k[4]  # the tiny model is sometimes right at this level
    assert pass_at_k(4, 1, 2) == 0.5 and pass_at_k(4, 3, 2) == 1.0
    assert r.greedy_long_share is None and r.sampled_long_share is None  # short prompts name no mode


def test_eval_samples_at_the_temperature_it_is_given(monkeypatch, capsys):
    """`--temperature` reaches the samples: near 0 every sample is the greedy answer, so maj@n
    and pass@n equal greedy; at 1.0 they do not (tiny, countdown level 2)."""
    common = ["eval", "--model", "ttscale-tiny", "--task", "countdown", "--level", "2",
              "--num-problems", "12", "--n", "4", "--json"]
    rows = {}
    for t in ("0.01", "1.0"):
        code, out, err = run_cli(monkeypatch, capsys, *common, "--temperature", t)
        assert code == 0, err
        rows[t] = json.loads(out)
    cold, hot = rows["0.01"], rows["1.0"]
    assert cold["maj_acc"] == cold["pass_at_n"] == cold["greedy_acc"]
    assert hot["pass_at_n"] != hot["greedy_acc"]  # spread samples: other answers than greedy's
    code, _, err = run_cli(monkeypatch, capsys, *common, "--temperature", "0")
    assert code == 2 and "\n" not in err and "temperature=0.0" in err and "accepted: > 0" in err, err
