"""The recipe that reproduces the shipped family: SFT per size, in one or two stages.

Stage 1 trains each size from scratch on the short mode. Stage 2 continues ttscale-small on a
mix of both modes (half of the examples in the long, step-checkable mode, tasks/effort.py), which
adds the long mode and keeps most of the short one. Training from scratch on the mix, continuing
the tiny, or continuing the base cost short-mode skill that the family's calibration checks need
(docs/training.md has the measurements), so tiny and base ship with stage 1 only.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ttscale.train.sft import SFTConfig, train_sft

# Stage 1. Steps and learning rates per size, sized for about 110 minutes on 2 CPU cores when the
# sizes train one after the other (see docs/training.md); a GPU finishes them in minutes. At these
# budgets the models are token-limited (a tiny on 28.7M tokens beat a small on 14.7M at most
# levels), so a larger size never sees fewer tokens than a smaller one: tiny 11.5M, small 14.7M,
# base 24.6M (on equal tokens base lost to small at countdown level 5).
RECIPE: dict[str, dict] = {
    "ttscale-tiny": dict(steps=1400, lr=3e-3, max_minutes=8),
    "ttscale-small": dict(steps=1800, lr=2e-3, max_minutes=17),
    "ttscale-base": dict(steps=3000, lr=1.5e-3, max_minutes=90),
}

# Stage 2: long-mode chains are about 3.5x longer, so sequences are 512 tokens (16 per step: the
# same tokens per step as stage 1); 6.6M tokens, about 18 minutes on one CPU core.
LONG_MODE = dict(long_fraction=0.5, block=512, batch_size=16, warmup=50)
CONTINUE: dict[str, dict] = {
    "ttscale-small": dict(steps=800, lr=1.5e-3, **LONG_MODE),
}


def family_config(name: str, device: str = "cpu", threads: int | None = None) -> SFTConfig:
    """Stage 1 of `name`: from scratch, short mode."""
    return SFTConfig(size=name, device=device, threads=threads, **RECIPE[name])


def continue_config(name: str, init_from: str | Path, device: str = "cpu",
                    threads: int | None = None) -> SFTConfig:
    """Stage 2 of `name` (sizes in CONTINUE): both modes, from the stage-1 model."""
    return replace(SFTConfig(size=name, device=device, threads=threads, **CONTINUE[name]),
                   init_from=str(init_from))


def train_family(out: str | Path = "models", names: list[str] | None = None, device: str = "cpu",
                 threads: int | None = None) -> dict[str, dict]:
    """Train each size in turn into `out/<name>` (stage-1 models of two-stage sizes go to
    `out/.stage1/<name>`); returns the training summaries of the final models."""
    out = Path(out)
    summaries = {}
    for n in names or list(RECIPE):
        if n not in CONTINUE:
            summaries[n] = train_sft(family_config(n, device, threads), out / n)
            continue
        first = out / ".stage1" / n
        if not (first / "model.safetensors").exists() or (first / "checkpoint.pt").exists():
            train_sft(family_config(n, device, threads), first)
        summaries[n] = train_sft(continue_config(n, first, device, threads), out / n)
    return summaries
