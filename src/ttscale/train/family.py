"""The recipe that reproduces the shipped family: one SFT run per size."""
from __future__ import annotations

from pathlib import Path

from ttscale.train.sft import SFTConfig, train_sft

# Steps and learning rates per size, sized for about 75 minutes on 2 CPU cores when the sizes
# train one after the other (see docs/training.md); a GPU finishes them in minutes. Small and
# base see the same number of tokens, so the larger model is the better one. Tiny must not see
# more tokens than small: on 28.7M tokens it beat small (14.7M) at most levels.
RECIPE: dict[str, dict] = {
    "ttscale-tiny": dict(steps=1400, lr=3e-3, max_minutes=8),
    "ttscale-small": dict(steps=1800, lr=2e-3, max_minutes=17),
    "ttscale-base": dict(steps=1800, lr=1.5e-3, max_minutes=58),
}


def family_config(name: str, device: str = "cpu", threads: int | None = None) -> SFTConfig:
    return SFTConfig(size=name, device=device, threads=threads, **RECIPE[name])


def train_family(out: str | Path = "models", names: list[str] | None = None, device: str = "cpu",
                 threads: int | None = None) -> dict[str, dict]:
    """Train each size in turn into `out/<name>`; returns the training summaries."""
    return {n: train_sft(family_config(n, device, threads), Path(out) / n)
            for n in (names or list(RECIPE))}
