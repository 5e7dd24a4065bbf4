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
