"""The shipped family: loads through transformers offline and reproduces its card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttscale.eval.card import CARD_TOLERANCE
from ttscale.models.registry import list_models
from ttscale.tasks import get_task
from ttscale.tasks.effort import apply_effort

POLICIES = [m for m in list_models() if m.kind == "policy"]


def test_family_spans_16x_and_fits_50mb():
    assert len(POLICIES) >= 3, "the repository ships at least three policy models"
    params = [m.params for m in POLICIES]
    assert max(params) >= 16 * min(params)
    total = sum(f.stat().st_size for m in POLICIES for f in Path(m.path).glob("*.safetensors"))
    assert total < 50 * 2**20


def _hf_greedy(path: str, prompts: list[str], max_new_tokens: int = 160) -> list[str]:
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("model", POLICIES, ids=lambda m: m.name)
def test_card_greedy_accuracy_reproduced_with_transformers(model):
    """Greedy accuracy through plain transformers matches the card on its fixed problems."""
    card = json.loads((Path(model.path) / "eval.json").read_text())
    assert (Path(model.path) / "README.md").read_text().count("| ") > 10
    checked = 0
    for row in card:
        effort = row.get("effort", "low")
        # long rows (768 tokens each) are left to the engine's tests; a model trained to choose
        # its mode (effort auto, an RL child) is checked in that form, at level 1 (at level 3 its
        # long arith chains make transformers' padded generate cost minutes)
        levels = (1,) if effort == "auto" else (1, 3)
        if row["level"] not in levels or effort == "high":
            continue
        task = get_task(row["task"])
        problems = [apply_effort(p, effort)
                    for p in task.problems(split="test", level=row["level"], n=row["num_problems"], seed=0)]
        # auto rows: 256 tokens hold every level-1 chain that ends (at most about 150); a padded
        # batch runs as long as its longest row, and a few countdown chains run on to the limit
        texts = _hf_greedy(model.path, [p.prompt for p in problems], 160 if effort == "low" else 256)
        acc = sum(task.is_correct(p, t) for p, t in zip(problems, texts)) / len(problems)
        assert abs(acc - row["greedy_acc"]) <= CARD_TOLERANCE, (row, acc)
        checked += 1
    assert checked >= 2
