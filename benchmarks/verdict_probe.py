"""Can a checking LM judge a countdown leaf? p(yes) after `a*b+d=c vs T ` for T = c, T near c
(1-3 off) and T far from c (15-30 off), on 150 random leaves with the arithmetic right.

    python benchmarks/verdict_probe.py ttscale-small-long ttscale-base-long
"""
from __future__ import annotations

import random
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttscale.models.registry import resolve_model


def probe(name: str, leaves: int = 150, seed: int = 0) -> dict[str, float]:
    path = str(resolve_model(name))
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    yes = tok("yes", add_special_tokens=False)["input_ids"][0]  # character tokens: 'y' vs 'n'
    no = tok("no", add_special_tokens=False)["input_ids"][0]
    rng = random.Random(seed)
    out: dict[str, list[float]] = {"equal": [], "near": [], "far": []}
    for _ in range(leaves):
        a, b, d = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 12)
        c = a * b + d
        for kind, t in (("equal", c), ("near", c + rng.choice([-3, -2, -1, 1, 2, 3])),
                        ("far", c + rng.choice([-20, 15, 30]))):
            text = f"Think: {a} {b} {d} -> {t}\n{a}*{b}={a * b} left {a * b} {d}\n{a * b}+{d}={c} vs {t} "
            ids = torch.tensor([tok(text)["input_ids"]])
            with torch.no_grad():
                p = torch.softmax(lm(ids).logits[0, -1], -1)
            out[kind].append(float(p[yes] / (p[yes] + p[no])))
    return {k: sum(v) / len(v) for k, v in out.items()}


if __name__ == "__main__":
    for name in sys.argv[1:] or ["ttscale-small-long", "ttscale-base-long"]:
        r = probe(name)
        print(f"{name}: mean p(yes) when c = T {r['equal']:.3f}, c 1-3 off {r['near']:.3f}, "
              f"c 15-30 off {r['far']:.3f}")
