"""The recipe that reproduces the shipped family: one SFT run per size."""
from __future__ import annotations

from pathlib import Path

from ttscale.train.sft import SFTConfig, train_sft

# Steps and learning rates per size, sized for about 110 minutes on 2 CPU cores when the sizes
# train one after the other (see docs/training.md); a GPU finishes them in minutes. At these
# budgets the models are token-limited (a tiny on 28.7M tokens beat a small on 14.7M at most
# levels), so a larger size never sees fewer tokens than a smaller one: tiny 11.5M, small 14.7M,
# base 24.6M (on equal tokens base lost to small at countdown level 5).
#
# Half of the examples are in the long mode (effort "high", tasks/effort.py); its chains are about
# 3.5x longer, so sequences are 512 tokens (16 per step: the same tokens per step as before).
LONG_MODE = dict(long_fraction=0.5, block=512, batch_size=16)
RECIPE: dict[str, dict] = {
    "ttscale-tiny": dict(steps=1400, lr=3e-3, max_minutes=8, **LONG_MODE),
    "ttscale-small": dict(steps=1800, lr=2e-3, max_minutes=17, **LONG_MODE),
    "ttscale-base": dict(steps=3000, lr=1.5e-3, max_minutes=90, **LONG_MODE),
}


def family_config(name: str, device: str = "cpu", threads: int | None = None) -> SFTConfig:
    return SFTConfig(size=name, device=device, threads=threads, **RECIPE[name])


def train_family(out: str | Path = "models", names: list[str] | None = None, device: str = "cpu",
                 threads: int | None = None) -> dict[str, dict]:
    """Train each size in turn into `out/<name>`; returns the training summaries."""
    return {n: train_sft(family_config(n, device, threads), Path(out) / n)
            for n in (names or list(RECIPE))}
