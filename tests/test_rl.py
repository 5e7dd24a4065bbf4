"""GRPO with TRL: start-up checks, learning, logs, checkpoints, resuming, failures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from ttscale.errors import TTScaleError
from ttscale.train.rewards import RewardConfig
from ttscale.tasks import get_task
from ttscale.tasks.effort import chosen_mode
from ttscale.train.rl import RLConfig, RLRunError, last_checkpoint, train_rl, training_problems


def digit_share(prompts, completions, **_):
    """A trivially learnable task: answer with digits only (share of digit characters)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def small(**kw) -> RLConfig:
    base = dict(task="arith", levels=[1], steps=4, generation_batch_size=16, num_generations=8,
                max_completion_length=8, learning_rate=3e-3, beta=0.0, save_steps=2,
                num_train_problems=64, seed=0)
    base.update(kw)
    return RLConfig(**base)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kw,match", [
    (dict(generation_batch_size=12, num_generations=8), "multiple of num_generations=8"),
    (dict(num_generations=1), "num_generations=1 is out of range"),
    (dict(max_completion_length=100_000), r"the model's context is \d+ tokens"),
    (dict(levels=[9]), "unknown level 9"),
    (dict(task="nope"), "unknown task 'nope'"),
    (dict(loss_type="ppo"), "unknown loss_type 'ppo'"),
    (dict(task="arith,nope"), "unknown task 'nope'"),
    (dict(task="arith,arith"), "names a task twice"),
    (dict(rollout="vllm"), "unknown rollout 'vllm'"),
    (dict(rollout="transformers", resample_flat=1), "resample_flat=1 is out of range"),
    (dict(effort="medium"), "unknown effort 'medium'"),
    (dict(effort="policy"), "unknown effort 'policy'; accepted: low, high, auto"),
    (dict(learn="chain"), "unknown learn 'chain'; accepted: all, mode"),
    (dict(learn="mode", effort="low"), "learn 'mode' trains the mode line of auto prompts"),
    (dict(rewards=RewardConfig(length_penalty=-0.5)), "length_penalty"),
])
def test_bad_configuration_is_refused_before_any_work(random_model_dir, tmp_path, kw, match):
    with pytest.raises(TTScaleError, match=match):
        train_rl(small(**kw), random_model_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_grpo_raises_the_mean_reward_of_a_learnable_task(random_model_dir, tmp_path):
    out = tmp_path / "rl"
    summary = train_rl(small(steps=20, save_steps=100), random_model_dir, out, reward_funcs=[digit_share],
                       progress=False)
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 21))
    first = sum(r["reward_mean"] for r in log[:4]) / 4
    last = sum(r["reward_mean"] for r in log[-4:]) / 4
    assert last > first + 0.2, (first, last)
    for key in ("reward_std", "mean_length", "frac_zero_std", "loss", "elapsed_s"):
        assert all(isinstance(r[key], float) for r in log), key
    # The result is a model directory in Hugging Face format that names its parent.
    meta = json.loads((out / "training.json").read_text())
    assert meta["parent"] == Path(random_model_dir).name and summary["steps"] == 20
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not list(out.glob("checkpoint-*"))  # cleaned up once the model is saved


def test_two_tasks_share_the_training_problems_evenly():
    cfg = small(task="arith,countdown", levels=[1, 2], steps=10)  # 10 steps x 2 prompts: 20 problems
    problems = training_problems([get_task("arith"), get_task("countdown")], cfg)
    cells = [(p.task, p.level) for p in problems]
    assert sorted(set(cells)) == [("arith", 1), ("arith", 2), ("countdown", 1), ("countdown", 2)]
    assert all(cells.count(c) == 5 for c in set(cells))
    assert len({p.id for p in problems}) == 20


def test_transformers_rollout_still_trains(random_model_dir, tmp_path):
    out = tmp_path / "hf"
    train_rl(small(steps=2, rollout="transformers"), random_model_dir, out, reward_funcs=[digit_share],
             progress=False)
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2] and all(r["generate_s"] > 0 for r in log)


def test_flat_groups_are_replaced_and_their_share_is_logged(random_model_dir, tmp_path):
    # A random model answers every arith problem wrong: every group is flat, so each step samples
    # its 2 groups, then 2 rounds of 2 replacements.
    out = tmp_path / "flat-resample"
    train_rl(small(steps=2, resample_flat=2, max_completion_length=4), random_model_dir, out, progress=False)
    log = read_log(out)
    assert all(r["groups_sampled"] == 6 and r["frac_flat_sampled"] == 1.0 for r in log)
    assert all(r["frac_flat_sampled_L1"] == 1.0 for r in log)


def test_resampling_leaves_fewer_flat_groups_in_the_batch(tmp_path):
    # ttscale-small solves about 8% of countdown level 5 (most groups of 8 all wrong) and 40% of
    # level 3 (most groups mixed): replacing flat groups leaves far fewer without signal.
    cfg = small(task="countdown", levels=[3, 5], steps=3, resample_flat=3, max_completion_length=64,
                learning_rate=1e-6, rewards=RewardConfig(correct=1.0, format=0.0))
    out = tmp_path / "small-resample"
    train_rl(cfg, "ttscale-small", out, progress=False)
    log = read_log(out)
    sampled = sum(r["frac_flat_sampled"] for r in log) / len(log)
    kept = sum(r["frac_zero_std"] for r in log) / len(log)
    assert sampled >= 0.15 and kept <= sampled - 0.15, (sampled, kept)


@pytest.fixture(scope="module")
def auto_tiny(tmp_path_factory) -> str:
    """ttscale-tiny taught the auto prompts (150 SFT steps, about 10 s): after `Auto: <question>` it
    names a mode, low or high, about half the time each."""
    from ttscale.models.registry import resolve_model
    from ttscale.train.sft import SFTConfig, train_sft

    out = tmp_path_factory.mktemp("auto-tiny")
    train_sft(SFTConfig(init_from=resolve_model("ttscale-tiny"), tasks=["arith"], levels=[1], steps=150,
                        batch_size=8, block=128, warmup=2, lr=3e-3, auto_fraction=1.0), out, progress=False)
    return str(out)


@pytest.mark.parametrize("learn", ["all", "mode"])
def test_with_effort_auto_the_policy_names_its_mode_after_the_question_and_learns_the_one_that_pays(
        auto_tiny, tmp_path, learn):
    seen: list[tuple[str, str]] = []

    def pays_high(prompts, completions, **_):
        seen.extend(zip(prompts, completions))
        return [1.0 if chosen_mode(c) == "high" else 0.0 for c in completions]

    out = tmp_path / "auto"
    train_rl(small(steps=16, effort="auto", max_completion_length=12, generation_batch_size=32,
                   learning_rate=1e-3, learn=learn), auto_tiny, out,
             reward_funcs=[pays_high], progress=False)
    assert all(p.startswith("Auto: ") for p, _ in seen)  # the question comes first, then the choice
    log = read_log(out)
    shares = [r["frac_high_arith_L1"] for r in log]
    first = [chosen_mode(c) == "high" for _, c in seen[:32]]
    assert shares[0] == pytest.approx(sum(first) / 32)  # the log counts what the rewards saw
    assert 0.2 < shares[0] < 0.8, shares
    assert sum(shares[-4:]) / 4 > sum(shares[:2]) / 2 + 0.25, shares
    lengths = [(r["trained_length"], r["mean_length"]) for r in log]
    if learn == "mode":  # only the first line ("low\n": 4 tokens, "high\n": 5) carries gradient
        assert all(trained <= 0.6 * whole for trained, whole in lengths), lengths
    else:
        assert all(trained == pytest.approx(whole) for trained, whole in lengths), lengths


def test_kl_is_logged_with_a_reference_and_flat_groups_are_counted(random_model_dir, tmp_path):
    def constant(prompts, completions, **_):
        return [1.0] * len(completions)

    out = tmp_path / "flat"
    train_rl(small(steps=2, beta=0.1), random_model_dir, out, reward_funcs=[constant], progress=False)
    log = read_log(out)
    assert all(r["frac_zero_std"] == 1.0 for r in log)  # every group scored the same: no signal
    assert all(r["kl"] is not None and r["kl"] >= 0 for r in log)


def test_a_failed_run_keeps_its_checkpoint_and_a_rerun_resumes_from_it(random_model_dir, tmp_path):
    out = tmp_path / "resume"
    calls = []

    def breaks_at_third_step(prompts, completions, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("reward server down")
        return digit_share(prompts, completions)

    with pytest.raises(RLRunError, match=r"reward server down.*checkpoint kept at .*checkpoint-2"):
        train_rl(small(steps=4), random_model_dir, out, reward_funcs=[breaks_at_third_step], progress=False)
    assert last_checkpoint(out).name == "checkpoint-2"
    assert [r["step"] for r in read_log(out)] == [1, 2]

    resumed = []

    def counting(prompts, completions, **kw):
        resumed.append(1)
        return digit_share(prompts, completions)

    summary = train_rl(small(steps=4), random_model_dir, out, reward_funcs=[counting], progress=False)
    assert len(resumed) == 2  # only steps 3 and 4 were generated again
    assert summary["steps"] == 4
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]


def test_a_non_finite_reward_keeps_the_last_good_checkpoint(random_model_dir, tmp_path):
    calls = []

    def nan_at_third_step(prompts, completions, **kw):
        calls.append(1)
        return [float("nan") if len(calls) == 3 else 0.5] * len(completions)

    out = tmp_path / "nan-reward"
    with pytest.raises(RLRunError, match=r"'nan_at_third_step' returned a non-finite reward.*checkpoint-2"):
        train_rl(small(steps=4), random_model_dir, out, reward_funcs=[nan_at_third_step], progress=False)
    assert last_checkpoint(out).name == "checkpoint-2" and [r["step"] for r in read_log(out)] == [1, 2]


def test_a_non_finite_loss_stops_the_run_before_the_update(random_model_dir, tmp_path):
    class PoisonBeforeStep4(TrainerCallback):
        # With two updates per generated batch, step 4 reuses step 3's samples: the poisoned
        # weights reach the loss without another rollout.
        def on_step_begin(self, args, state, control, model=None, **kw):
            if state.global_step == 3:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    out = tmp_path / "nan-loss"
    with pytest.raises(RLRunError, match=r"non-finite loss nan at step 4.*checkpoint-2"):
        train_rl(small(steps=4, num_iterations=2), random_model_dir, out, reward_funcs=[digit_share],
                 progress=False, callbacks=[PoisonBeforeStep4()])
    assert last_checkpoint(out).name == "checkpoint-2" and [r["step"] for r in read_log(out)] == [1, 2, 3]


def test_a_killed_run_resumes_with_its_log_trimmed_to_the_checkpoint(random_model_dir, tmp_path):
    """SIGKILL a real run at whatever point it has reached past its second checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    code = ("from ttscale.train.rl import RLConfig, train_rl; "
            "train_rl(RLConfig(task='arith', levels=[1], steps=10_000, generation_batch_size=16, "
            "num_generations=8, max_completion_length=8, beta=0.0, save_steps=1, num_train_problems=64, "
            f"threads=1), {random_model_dir!r}, {str(out)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600  # generous: only a machine loaded by other jobs comes near it
        while time.time() < deadline and not (out / "checkpoint-3" / "trainer_state.json").exists():
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = last_checkpoint(out)
    done = int(kept.name.split("-")[1])
    assert done >= 3
    summary = train_rl(small(steps=done + 2, save_steps=1), random_model_dir, out, reward_funcs=[digit_share],
                       progress=False)
    assert summary["steps"] == done + 2  # continued, not restarted
    assert [r["step"] for r in read_log(out)] == list(range(1, done + 3))  # no lost or repeated step


def test_non_finite_weights_stop_the_run_before_they_are_checkpointed(random_model_dir, tmp_path):
    class Blowup(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 3:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    out = tmp_path / "nan"
    with pytest.raises(RLRunError, match=r"non-finite weights after step 3.*checkpoint-2"):
        train_rl(small(steps=4), random_model_dir, out, reward_funcs=[digit_share], progress=False,
                 callbacks=[Blowup()])
    kept = last_checkpoint(out)
    assert kept.name == "checkpoint-2"
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(kept / "model.safetensors").values())


def _cli(*args: str, cwd: Path) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-c", "from ttscale.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_cli_trains_writes_a_card_with_its_parent_and_prints_the_table(random_model_dir, tmp_path):
    out = tmp_path / "cli-rl"
    r = _cli("train", "rl", "--model", random_model_dir, "--task", "arith,countdown", "--out", str(out),
             "--steps", "2", "--level", "1", "--generation-batch-size", "8", "--num-generations", "4",
             "--max-completion-length", "8", "--length-penalty", "0.5", "--eval-problems", "1",
             "--eval-n", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"wrote {out}" in r.stdout
    assert "| greedy | maj@n | pass@n |" in r.stdout  # the card's table
    assert "| arith |" in r.stdout and "| countdown |" in r.stdout  # both tasks evaluated
    card = (out / "README.md").read_text()
    assert f"- parent: {Path(random_model_dir).name}" in card and "ttscale train rl" in card
    assert "wall time:" in card and "length penalty 0.5" in card
    meta = json.loads((out / "training.json").read_text())
    assert meta["parent"] == Path(random_model_dir).name and meta["command"].startswith("ttscale train rl")


def test_cli_reports_a_bad_group_size_in_one_line(random_model_dir, tmp_path):
    r = _cli("train", "rl", "--model", random_model_dir, "--task", "arith", "--out", str(tmp_path / "x"),
             "--generation-batch-size", "12", "--num-generations", "8", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: generation_batch_size=12 is out of range")
