"""A learned process (PRM) or outcome (ORM) reward model, in Hugging Face format.

The model is a `LlamaForTokenClassification` with one label: a transformer backbone and a scalar
head read at the step delimiter that ends each step. sigmoid(head) is the probability that the
solution is still on a path to the right answer after that step (PRM), or, at the last step,
that the whole solution is right (ORM). `config.json` carries a `ttscale` field saying which.

All solutions of a call are scored in one batched forward pass; the usage counts its tokens and
FLOPs (ttscale.engine.flops) as verifier compute.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaForTokenClassification

from ttscale.engine.flops import ModelShape
from ttscale.errors import TTScaleError, unknown
from ttscale.rewards.aggregate import aggregate, check_aggregate
from ttscale.rewards.base import ScoreBatch, Scored
from ttscale.types import Completion, Problem, Usage

KINDS = ("prm", "orm")


def reward_model_meta(path: str | Path) -> dict[str, Any]:
    """The `ttscale` field of a reward model's config.json (kind, delimiter, training data)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise TTScaleError(f"reward model {str(path)!r} has no config.json; accepted: a directory "
                           "made by `ttscale train prm`")
    meta = json.loads(cfg.read_text()).get("ttscale")
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
        raise TTScaleError(f"{str(path)!r} is not a ttscale reward model (its config.json has no "
                           "ttscale.kind of prm or orm); accepted: a directory made by `ttscale train prm`")
    return meta


def step_end_chars(prompt: str, solution: str, delimiter: str = "\n") -> list[int]:
    """Character offsets, in prompt+solution, of the delimiter that ends each non-empty step.

    The solution is expected to end with the delimiter (callers append one when it does not).
    """
    out = []
    start = 0
    while True:
        end = solution.find(delimiter, start)
        if end < 0:
            break
        if solution[start:end].strip():
            out.append(len(prompt) + end)
        start = end + len(delimiter)
    return out


def encode_for_reward(tokenizer: Any, prompt: str, solution: str, delimiter: str = "\n",
                      max_len: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of prompt+solution and the token index at which each step's score is read."""
    if solution and not solution.endswith(delimiter):
        solution += delimiter
    enc = tokenizer(prompt + solution, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    positions = []
    j = 0
    for ch in step_end_chars(prompt, solution, delimiter):
        while j < len(offsets) and not (offsets[j][0] <= ch < offsets[j][1]):
            j += 1
        if j == len(offsets):
            break
        positions.append(j)
    if max_len is not None and len(ids) > max_len:
        ids = ids[:max_len]
        positions = [min(p, max_len - 1) for p in positions]
    return ids, positions


def shape_of(model: torch.nn.Module) -> ModelShape:
    cfg = model.config
    return ModelShape(n_params=sum(p.numel() for p in model.parameters()),
                      n_layer=cfg.num_hidden_layers, d_model=cfg.hidden_size)


class LearnedPRM:
    """Scores solutions with a reward model trained by `ttscale train prm` (a directory or the
    name of a shipped one, e.g. `ttscale-prm`).

    `kind="prm"` scores each step and aggregates them (`last`, `min`, `prod`, `mean`);
    `kind="orm"` scores the solution by its last step only (step scores are still reported).
    """

    def __init__(self, path: str | Path, aggregate: str = "last", kind: str = "prm",
                 device: str = "cpu", batch_size: int = 64) -> None:
        if kind not in KINDS:
            raise unknown("reward model kind", kind, KINDS)
        self.aggregate = check_aggregate(aggregate)
        self.kind = kind
        self.name = kind
        if not Path(path).is_dir():
            from ttscale.models.registry import resolve_model

            path = resolve_model(str(path))  # a shipped model's name
        self.path = str(path)
        self.meta = reward_model_meta(path)
        self.delimiter = self.meta.get("step_delimiter", "\n")
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = LlamaForTokenClassification.from_pretrained(self.path, dtype=torch.float32)
        self.model.to(self.device).eval()
        self.shape = shape_of(self.model)
        self.max_len = int(self.model.config.max_position_embeddings)
        self.batch_size = batch_size
        self.pad_id = self.tokenizer.pad_token_id or 0

    def step_scores(self, prompts: Sequence[str], solutions: Sequence[str]) -> tuple[list[list[float]], Usage]:
        """Per-step probabilities for each (prompt, solution), and the usage of computing them."""
        encoded = [encode_for_reward(self.tokenizer, p, s, self.delimiter, self.max_len)
                   for p, s in zip(prompts, solutions)]
        usage = Usage()
        out: list[list[float]] = []
        for b in range(0, len(encoded), self.batch_size):
            chunk = encoded[b: b + self.batch_size]
            logits = forward_logits(self.model, [ids for ids, _ in chunk], self.pad_id, self.device)
            for row, (ids, pos) in enumerate(chunk):
                out.append(torch.sigmoid(logits[row, pos]).tolist() if pos else [])
                usage = usage + Usage(prompt_tokens=len(ids), flops=self.shape.span_flops(0, len(ids)))
        return out, usage

    def score(self, problem: Problem, solutions: Sequence[str],
              completions: Sequence[Completion] | None = None) -> ScoreBatch:
        steps, usage = self.step_scores([problem.prompt] * len(solutions), solutions)
        scores = []
        for s in steps:
            if self.kind == "orm":
                scores.append(Scored(float(s[-1]) if s else 0.0, s))
            else:
                scores.append(Scored(aggregate(s, self.aggregate), s))
        return ScoreBatch(scores, usage)


def load_reward_model(path: str | Path, aggregate: str = "last", kind: str = "prm",
                      device: str = "cpu") -> Any:
    """The reward model in `path` (a directory or a shipped name): a `LearnedPRM`, or, for one
    made with `--reader lm-check`, a `rewards.lm_check.LMStepChecker` with its fitted head."""
    if not Path(path).is_dir():
        from ttscale.models.registry import resolve_model

        path = resolve_model(str(path))
    meta = reward_model_meta(path)
    if meta.get("reader") == "lm-check":
        if kind != "prm":
            raise TTScaleError(f"{str(path)!r} is a step checker (a prm); accepted: the prm scorer")
        from ttscale.rewards.lm_check import LMStepChecker

        return LMStepChecker(str(path), head=meta["lm_check_head"], aggregate=aggregate,
                             delimiter=meta.get("step_delimiter", "\n"), device=device)
    return LearnedPRM(path, aggregate=aggregate, kind=kind, device=device)


def padded_logits(model: torch.nn.Module, batch: Sequence[Sequence[int]], pad_id: int,
                  device: torch.device | str = "cpu", grad: bool = False) -> torch.Tensor:
    """`model`'s logits on a right-padded batch of token ids: shape (batch, length, outputs)."""
    length = max(len(ids) for ids in batch)
    x = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, ids in enumerate(batch):
        x[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    with torch.set_grad_enabled(grad):
        return model(input_ids=x.to(device), attention_mask=mask.to(device)).logits


def forward_logits(model: torch.nn.Module, batch: Sequence[Sequence[int]], pad_id: int,
                   device: torch.device | str = "cpu", grad: bool = False) -> torch.Tensor:
    """The head's logit at every position of a right-padded batch: shape (batch, length)."""
    return padded_logits(model, batch, pad_id, device, grad)[..., 0].float()
