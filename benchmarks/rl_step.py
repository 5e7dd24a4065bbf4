"""Cost of one GRPO step of ttscale-small, by rollout backend: generation vs scoring vs update.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_step.py --rollout engine --steps 4

Runs `train_rl` for a few steps on arith+countdown (levels 1-5, the default group size 8 and 32
completions per step) with torch on one thread, and prints the mean per-step seconds from the
run's log (`generate_s`: sampling the groups; `score_s`: rewards plus TRL's forward passes for
old/reference log-probs; `step_s`: the whole step including the backward pass and optimizer).
The first step is left out (it loads and warms up).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ttscale.train.rl import RLConfig, train_rl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ttscale-small")
    ap.add_argument("--task", default="arith,countdown")
    ap.add_argument("--rollout", default="engine")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.02)
    ap.add_argument("--resample-flat", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RLConfig(task=a.task, levels=[1, 2, 3, 4, 5], steps=a.steps, rollout=a.rollout, beta=a.beta,
                   resample_flat=a.resample_flat, save_steps=1000, threads=1)
    with tempfile.TemporaryDirectory() as d:
        train_rl(cfg, a.model, Path(d) / "out", progress=False)
        log = [json.loads(x) for x in (Path(d) / "out" / "train_log.jsonl").read_text().splitlines()]
    rows = log[1:] or log
    mean = {k: sum(r[k] for r in rows) / len(rows)
            for k in ("step_s", "generate_s", "score_s", "mean_length", "accuracy")}
    mean["update_s"] = mean["step_s"] - mean["generate_s"] - mean["score_s"]
    print(json.dumps({"rollout": a.rollout, "model": a.model, "task": a.task, "steps_measured": len(rows),
                      **{k: round(v, 3) for k, v in mean.items()}}))


if __name__ == "__main__":
    main()
