"""Packed training sequences of synthetic step-by-step solutions (little padding, no waste)."""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

from ttscale.models.tokenizer import BOS, EOS, build_tokenizer
from ttscale.tasks import BUILTIN_TASKS

IGNORE = -100


class CharEncoder:
    """The tokenizer's character map, applied directly: same ids, far faster per example."""

    def __init__(self) -> None:
        tok = build_tokenizer()
        vocab = tok.get_vocab()
        self.bos, self.eos, self.unk = vocab[BOS], vocab[EOS], vocab["<unk>"]
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        v, unk = self.vocab, self.unk
        return [v.get(c, unk) for c in text]


def example_ids(enc: CharEncoder, prompt: str, solution: str) -> tuple[list[int], list[int]]:
    """Token ids of `<bos> prompt solution <eos>` and labels that train only the solution."""
    p = [enc.bos] + enc.encode(prompt)
    s = enc.encode(solution) + [enc.eos]
    return p + s, [IGNORE] * len(p) + s


def packed_batches(tasks: Sequence[str], levels: Sequence[int], batch_size: int, block: int,
                   seed: int, long_fraction: float = 0.0,
                   auto_fraction: float = 0.0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, labels) batches of `block` tokens, examples packed back to back.

    A `long_fraction` of the examples is in the long mode (`effort="high"`), an `auto_fraction`
    leaves the mode to the model (`effort="auto"`, either mode at random), the rest short.
    """
    rng = random.Random(seed)
    enc = CharEncoder()
    task_objs = [BUILTIN_TASKS[t]() for t in tasks]
    ids: list[int] = []
    labels: list[int] = []
    need = batch_size * (block + 1)
    while True:
        while len(ids) < need:
            task = rng.choice(task_objs)
            r = rng.random()
            effort = "high" if r < long_fraction else "auto" if r < long_fraction + auto_fraction else "low"
            prompt, solution = task.sample_training_text(rng, rng.choice(list(levels)), effort)
            i, l = example_ids(enc, prompt, solution)
            ids += i
            labels += l
        x = torch.tensor(ids[:need]).view(batch_size, block + 1)
        y = torch.tensor(labels[:need]).view(batch_size, block + 1)
        ids, labels = ids[need:], labels[need:]
        # Next-token targets: predict position t+1 from positions <= t.
        yield x[:, :-1].contiguous(), y[:, 1:].contiguous()
