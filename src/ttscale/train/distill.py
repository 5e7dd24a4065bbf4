"""Distilling search into the policy: expert iteration in the ReST-EM style (arXiv:2312.06585).

Each round: (E) the current policy solves fresh training problems with a tree search (beam
search or MCTS, guided by the oracle's step check or a learned PRM); only solutions that the
task's oracle verifies are kept; (M) the parent model is fine-tuned on them with the SFT
trainer. Fine-tuning the parent rather than the last policy each round is ReST-EM's guard
against drift. Per round the fraction of problems solved and the policy's held-out greedy
accuracy are reported. Finished rounds are kept on disk, so a rerun continues where it stopped.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.models.registry import resolve_model
from ttscale.tasks import BuiltinTask, Task, get_task
from ttscale.types import Problem

STRATEGIES = ("beam_search", "mcts")
SCORERS = ("oracle", "prm")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class DistillConfig:
    """Settings of an expert-iteration run; recorded in `training.json` and the model card."""

    task: str = "arith"
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    rounds: int = 2
    strategy: str = "beam_search"  # the search that finds solutions: beam_search or mcts
    search_params: dict = field(default_factory=dict)  # that strategy's parameters (its defaults if empty)
    scorer: str = "oracle"  # what guides the search: the oracle's step check, or a learned PRM
    scorer_model: str | None = None  # PRM directory (default: models/ttscale-prm)
    problems_per_round: int = 200  # fresh training problems searched per round, over all levels
    keep_per_problem: int = 2  # distinct verified solutions kept per problem
    sft_steps: int = 150  # fine-tuning steps per round (fewer when `epochs` of the data come first)
    epochs: float = 4.0  # at most this many passes over a round's verified solutions
    batch_size: int = 16
    block: int = 256
    learning_rate: float = 1e-4  # fresh AdamW on a converged model: 3e-4 cost tiny 10 points (docs/results.md)
    eval_problems: int = 30  # held-out problems per level for the per-round greedy accuracy
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    backend: str = "torch"


def check_distill_config(cfg: DistillConfig, task: Task) -> None:
    """Reject a configuration that cannot run, before any work starts."""
    if cfg.strategy not in STRATEGIES:
        raise unknown("search strategy", cfg.strategy, STRATEGIES)
    if cfg.scorer not in SCORERS:
        raise unknown("scorer", cfg.scorer, SCORERS)
    if not isinstance(task, BuiltinTask):
        raise TTScaleError(f"distillation needs a built-in task (tree search steps and fresh problems); "
                           f"got {cfg.task!r}; accepted: arith, countdown")
    if not cfg.levels:
        raise TTScaleError(f"no levels given; accepted: some of {list(task.levels)}")
    for lv in cfg.levels:
        if lv not in task.levels:
            raise unknown("level", lv, task.levels)
    for name in ("rounds", "problems_per_round", "keep_per_problem", "sft_steps", "batch_size", "block"):
        if int(getattr(cfg, name)) < 1:
            raise out_of_range(name, getattr(cfg, name), ">= 1")
    if cfg.eval_problems < 0:
        raise out_of_range("eval_problems", cfg.eval_problems, ">= 0")
    for name in ("learning_rate", "epochs"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            raise out_of_range(name, v, "a finite number > 0")
    from ttscale.strategies import get_params

    get_params(cfg.strategy, cfg.search_params)  # a bad search parameter fails here, with its name


# -- E step: search and keep what the oracle verifies ------------------------------------------
def verified_solutions(task: Task, problem: Problem, solution, keep: int) -> list[str]:
    """Up to `keep` distinct candidates of a search `Solution` that the oracle verifies.

    The search's own choice comes first, then candidates by score. Whatever scorer guided the
    search, nothing unverified is kept.
    """
    ranked = sorted(solution.candidates, key=lambda c: -(c.score if c.score is not None else -math.inf))
    texts = ([solution.text] if solution.text else []) + [c.text for c in ranked]
    out: list[str] = []
    for t in texts:
        t = t.strip("\n") + "\n"
        if t not in out and task.is_correct(problem, t):
            out.append(t)
        if len(out) >= keep:
            break
    return out


def search_round(task: Task, problems: Sequence[Problem], generator, cfg: DistillConfig, scorer,
                 progress: bool = False) -> tuple[list[dict], dict]:
    """Solve `problems` with the configured search; the verified examples and round statistics."""
    from tqdm import tqdm

    from ttscale.strategies import get_params, solve

    params = get_params(cfg.strategy, cfg.search_params)
    examples, solved, flops = [], 0, 0.0
    for p in tqdm(problems, disable=not progress, desc=f"search ({cfg.strategy})"):
        sol = solve(p, task, generator, cfg.strategy, params, scorer)
        flops += sol.cost.flops
        kept = verified_solutions(task, p, sol, cfg.keep_per_problem)
        solved += bool(kept)
        examples += [{"problem_id": p.id, "level": p.level, "prompt": p.prompt, "solution": s} for s in kept]
    stats = {"problems": len(problems), "solved": solved / max(len(problems), 1), "kept": len(examples),
             "search_flops": flops}
    return examples, stats


# -- M step: fine-tune on the kept solutions ---------------------------------------------------
def packed_examples(examples: Sequence[tuple[str, str]], batch_size: int, block: int,
                    seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, labels) batches of the given (prompt, solution) pairs, packed and
    reshuffled every pass; the loss falls on solution tokens only (as in SFT)."""
    from ttscale.train.data import CharEncoder, example_ids

    if not examples:
        raise TTScaleError("no examples to fine-tune on")
    enc = CharEncoder()
    encoded = [example_ids(enc, p, s) for p, s in examples]
    rng = random.Random(seed)
    ids: list[int] = []
    labels: list[int] = []
    need = batch_size * (block + 1)
    order: list[int] = []
    while True:
        while len(ids) < need:
            if not order:
                order = list(range(len(encoded)))
                rng.shuffle(order)
            i, lab = encoded[order.pop()]
            ids += i
            labels += lab
        x = torch.tensor(ids[:need]).view(batch_size, block + 1)
        y = torch.tensor(labels[:need]).view(batch_size, block + 1)
        ids, labels = ids[need:], labels[need:]
        yield x[:, :-1].contiguous(), y[:, 1:].contiguous()


def finetune_steps(examples: Sequence[tuple[str, str]], cfg: DistillConfig) -> int:
    """`sft_steps`, or fewer when that many would pass over the data more than `epochs` times."""
    tokens = sum(len(p) + len(s) + 2 for p, s in examples)
    return max(1, min(cfg.sft_steps, math.ceil(cfg.epochs * tokens / (cfg.batch_size * cfg.block))))


# -- the loop ----------------------------------------------------------------------------------
def _greedy_accuracy(model_dir: str, task: Task, cfg: DistillConfig) -> dict[int, float]:
    if cfg.eval_problems == 0:
        return {}
    from ttscale.engine import load_generator
    from ttscale.eval.evaluate import evaluate

    gen = load_generator(model_dir, backend=cfg.backend, device=cfg.device)
    return {lv: evaluate(gen, task, task.problems("heldout", lv, cfg.eval_problems, cfg.seed), n=0).greedy_acc
            for lv in cfg.levels}


def _round_problems(task: Task, cfg: DistillConfig, r: int) -> list[Problem]:
    per = _spread(cfg.problems_per_round, len(cfg.levels))
    out = [p for lv, k in zip(cfg.levels, per) if k
           for p in task.problems("train", lv, k, seed=cfg.seed * 1000 + r)]
    random.Random(cfg.seed * 1000 + r).shuffle(out)
    return out


def _spread(total: int, k: int) -> list[int]:
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def _read_rounds(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def distill(cfg: DistillConfig, model: str, out: str | Path, progress: bool = True) -> dict:
    """Run expert iteration from `model` and save the final policy to `out`.

    Returns the summary written to `out/training.json`: the parent, the configuration, and per
    round the fraction of training problems solved, the verified solutions kept and the policy's
    held-out greedy accuracy (round 0 is the parent).
    """
    from ttscale.engine import load_generator
    from ttscale.rewards import get_scorer
    from ttscale.train.sft import SFTConfig, train_sft

    out = Path(out)
    parent = resolve_model(model)
    task = get_task(cfg.task)
    check_distill_config(cfg, task)
    if cfg.scorer == "prm" and cfg.scorer_model:
        resolve_model(cfg.scorer_model)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "distill_log.jsonl"
    meta_path = out / "training.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    finished = meta.get("rounds_done", 0) if meta.get("method") == "rest-em" else 0
    if finished >= cfg.rounds:
        return meta  # already done: rerunning the same command changes nothing
    # A round counts as done once its model and its log record exist; anything later is redone.
    rows = [r for r in _read_rounds(log_path)
            if r["round"] <= finished or (out / f"round-{r['round']}" / "training.json").exists()]
    rows = [r for i, r in enumerate(rows) if r["round"] == i]
    log_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t_session = time.time()
    elapsed_before = rows[-1]["elapsed_s"] if rows else 0.0

    def record(row: dict) -> None:
        row["elapsed_s"] = round(elapsed_before + time.time() - t_session, 1)
        rows.append(row)
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    if not rows:
        acc = _greedy_accuracy(parent, task, cfg)
        record({"round": 0, "model": Path(parent).name, "accuracy": _mean(acc), "accuracy_per_level": acc})
    for r in range(len(rows), cfg.rounds + 1):
        prev = out / f"round-{r - 1}"
        policy = parent if r == 1 else str(prev if prev.exists() else out)
        generator = load_generator(policy, backend=cfg.backend, device=cfg.device)
        scorer = get_scorer(cfg.scorer, task=task, generator=generator, model=cfg.scorer_model)
        examples, stats = search_round(task, _round_problems(task, cfg, r), generator, cfg, scorer, progress)
        (out / f"data-round-{r}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
        round_dir = out / f"round-{r}"
        pairs = [(e["prompt"], e["solution"]) for e in examples]
        if pairs:
            steps = finetune_steps(pairs, cfg)
            sft = SFTConfig(init_from=parent, tasks=[cfg.task], levels=list(cfg.levels), steps=steps,
                            batch_size=cfg.batch_size, block=cfg.block, lr=cfg.learning_rate,
                            warmup=max(1, steps // 10), seed=cfg.seed + r, device=cfg.device)
            train_sft(sft, round_dir, progress=progress,
                      batches=packed_examples(pairs, cfg.batch_size, cfg.block, seed=cfg.seed * 1000 + r))
        else:  # nothing verified: the policy stays as it was
            steps = 0
            round_dir.mkdir(parents=True, exist_ok=True)
            for f in MODEL_FILES:
                if (Path(policy) / f).exists():
                    shutil.copy2(Path(policy) / f, round_dir / f)
            (round_dir / "training.json").write_text(json.dumps({"steps": 0}) + "\n")
        acc = _greedy_accuracy(str(round_dir), task, cfg)
        record({"round": r, **stats, "sft_steps": steps, "accuracy": _mean(acc), "accuracy_per_level": acc})

    final = out / f"round-{cfg.rounds}"
    for f in MODEL_FILES:
        if (final / f).exists():
            shutil.copy2(final / f, out / f)
    parent_meta = Path(parent) / "training.json"
    summary = {
        "kind": "policy", "method": "rest-em", "parent": Path(parent).name, "parent_path": str(parent),
        "config": asdict(cfg), "rounds_done": cfg.rounds, "rounds": rows,
        "wall_s": rows[-1]["elapsed_s"], "params": _params(out),
        "torch": torch.__version__, "device": cfg.device,
        "parent_training": json.loads(parent_meta.read_text()).get("command") if parent_meta.exists() else None,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    for d in out.glob("round-*"):  # the round models are no longer needed: the final one is in `out`
        shutil.rmtree(d, ignore_errors=True)
    return summary


def _mean(acc: dict) -> float | None:
    return round(sum(acc.values()) / len(acc), 4) if acc else None


def _params(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
