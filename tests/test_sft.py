"""SFT: a few steps lower the loss; a killed run resumes from its checkpoint."""
from __future__ import annotations

import json

from transformers import AutoModelForCausalLM

from ttscale.train.sft import SFTConfig, train_sft


def _losses(path):
    return [json.loads(line)["loss"] for line in (path / "train_log.jsonl").read_text().splitlines()]


def test_few_sft_steps_lower_the_loss(tmp_path):
    cfg = SFTConfig(size="ttscale-tiny", steps=40, batch_size=8, block=128, warmup=5, lr=3e-3)
    summary = train_sft(cfg, tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert summary["steps"] == 40
    assert losses[-1] < 0.8 * losses[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path)  # saved in HF format
    assert model.config.model_type == "llama"


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL a real training process mid-run; the next run continues from its checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    code = ("from ttscale.train.sft import SFTConfig, train_sft; "
            "train_sft(SFTConfig(size='ttscale-tiny', steps=10_000, batch_size=4, block=64, "
            f"warmup=2, checkpoint_every_s=0.0, threads=1), {str(tmp_path)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    ckpt = tmp_path / "checkpoint.pt"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] >= 3:
                break
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = torch.load(ckpt, weights_only=False)["step"]
    assert done >= 3 and not (tmp_path / "training.json").exists()
    cfg = SFTConfig(size="ttscale-tiny", steps=done + 4, batch_size=4, block=64, warmup=2)
    summary = train_sft(cfg, tmp_path, progress=False)
    assert summary["steps"] == done + 4  # continued, not restarted
    assert not ckpt.exists()
    assert AutoModelForCausalLM.from_pretrained(tmp_path) is not None


def test_the_family_recipe_continues_two_stage_sizes_from_their_stage_one_model(tmp_path, monkeypatch):
    from ttscale.train import family

    monkeypatch.setitem(family.RECIPE, "ttscale-tiny", dict(steps=2, lr=1e-3, batch_size=2, block=64))
    monkeypatch.setitem(family.CONTINUE, "ttscale-tiny", dict(steps=2, lr=1e-3, batch_size=2, block=128,
                                                             long_fraction=0.5, warmup=1))
    summaries = family.train_family(tmp_path, ["ttscale-tiny"])
    assert summaries["ttscale-tiny"]["steps"] == 2
    stage1 = tmp_path / ".stage1" / "ttscale-tiny"
    assert (stage1 / "model.safetensors").exists()
    meta = json.loads((tmp_path / "ttscale-tiny" / "training.json").read_text())
    assert meta["config"]["init_from"] == str(stage1) and meta["config"]["long_fraction"] == 0.5
    AutoModelForCausalLM.from_pretrained(tmp_path / "ttscale-tiny")  # a loadable HF model


def test_sft_cli_refuses_a_long_fraction_outside_zero_to_one(tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    code, _, err = run_cli(monkeypatch, capsys, "train", "sft", "--out", str(tmp_path / "m"),
                           "--long-fraction", "1.5")
    assert code == 2
    assert "long_fraction=1.5 is out of range; accepted: 0 <= long_fraction <= 1" in err
    assert not (tmp_path / "m").exists()  # refused before any work


def test_sft_cli_refuses_an_auto_fraction_that_leaves_no_room(tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    code, _, err = run_cli(monkeypatch, capsys, "train", "sft", "--out", str(tmp_path / "m"),
                           "--long-fraction", "0.6", "--auto-fraction", "0.5")
    assert code == 2
    assert "auto_fraction=0.5 is out of range; accepted: 0 <= auto_fraction <= 1 - long_fraction = 0.4" in err
    assert not (tmp_path / "m").exists()
