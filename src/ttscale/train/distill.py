"""Distilling search into the policy: expert iteration in the ReST-EM style (arXiv:2312.06585).

Each round: (E) the current policy solves fresh training problems of one or more tasks with a
tree search (beam search or MCTS, guided by the oracle's step check or a learned PRM); only
solutions that the task's oracle verifies are kept; (M) the parent model is fine-tuned on them
with the SFT trainer. At effort "high" every problem is asked in the long thinking mode
(`Think: ...`, tasks/effort.py), so the search, the fine-tuning data and the evaluation are all
in that mode. Fine-tuning the parent rather than the last policy each round is ReST-EM's guard
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
from typing import Any

import torch

from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.models.registry import resolve_model
from ttscale.tasks import BUILTIN_TASKS, Task, get_task
from ttscale.tasks.effort import apply_effort
from ttscale.types import Problem

STRATEGIES = ("beam_search", "mcts")
SCORERS = ("oracle", "prm")
EFFORTS = ("low", "high")  # "auto" would need the mode line searched too
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class DistillConfig:
    """Settings of an expert-iteration run; recorded in `training.json` and the model card."""

    task: str = "arith"  # a built-in task, or several separated by commas (arith,countdown)
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
    block: int | None = None  # tokens per fine-tuning sequence; None: 256, or 512 at effort "high"
    learning_rate: float = 1e-4  # fresh AdamW on a converged model: 3e-4 cost tiny 10 points (docs/results.md)
    eval_problems: int = 30  # held-out problems per level for the per-round greedy accuracy
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    backend: str = "torch"
    effort: str = "low"  # the thinking mode every problem is asked in: low, or high (the long chains)

    def __post_init__(self) -> None:
        if self.block is None:  # long-mode examples reach about 500 tokens
            self.block = 512 if self.effort == "high" else 256

    @property
    def task_names(self) -> list[str]:
        return [t.strip() for t in self.task.split(",") if t.strip()]


def distill_tasks(cfg: DistillConfig) -> list[Task]:
    """The run's built-in tasks, in the order given; anything else is a TTScaleError."""
    names = cfg.task_names
    for name in names or [cfg.task]:
        if name not in BUILTIN_TASKS:
            raise TTScaleError(f"distillation needs built-in tasks (tree search steps and fresh problems); "
                               f"got {name!r}; accepted: arith, countdown, or both separated by a comma")
    if len(set(names)) != len(names):
        raise TTScaleError(f"task {cfg.task!r} names a task twice; accepted: each task once")
    return [get_task(n) for n in names]


def check_distill_config(cfg: DistillConfig, tasks: Sequence[Task]) -> None:
    """Reject a configuration that cannot run, before any work starts."""
    if cfg.strategy not in STRATEGIES:
        raise unknown("search strategy", cfg.strategy, STRATEGIES)
    if cfg.scorer not in SCORERS:
        raise unknown("scorer", cfg.scorer, SCORERS)
    if cfg.effort == "auto":
        raise TTScaleError("effort 'auto' is not supported by distillation (the mode line would need "
                           "searching too); accepted: low, high")
    if cfg.effort not in EFFORTS:
        raise unknown("effort", cfg.effort, EFFORTS)
    for task in tasks:
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
    search_params(cfg)  # a bad search parameter fails here, with its name


def search_params(cfg: DistillConfig) -> Any:
    """The search's checked parameters at `cfg.effort`: at "high", room for long chains
    (`params_at_effort`); a value the caller gave is kept."""
    from ttscale.strategies import params_at_effort

    return params_at_effort(cfg.strategy, cfg.search_params, cfg.effort)


# -- E step: search and keep what the oracle verifies ------------------------------------------
def verified_solutions(task: Task, problem: Problem, solution, keep: int) -> list[str]:
    """Up to `keep` distinct candidates of a search `Solution` that the oracle verifies: the
    answer is right and every step checks in the mode the prompt asks for (a short chain under a
    long-mode prompt is not kept).

    The search's own choice comes first, then candidates by score. Whatever scorer guided the
    search, nothing unverified is kept.
    """
    ranked = sorted(solution.candidates, key=lambda c: -(c.score if c.score is not None else -math.inf))
    texts = ([solution.text] if solution.text else []) + [c.text for c in ranked]
    out: list[str] = []
    for t in texts:
        t = t.strip("\n") + "\n"
        if t not in out and task.is_correct(problem, t) and all(task.check_steps(problem, task.split_steps(t))):
            out.append(t)
        if len(out) >= keep:
            break
    return out


def search_round(task: Task, problems: Sequence[Problem], generator, cfg: DistillConfig, scorer,
                 progress: bool = False) -> tuple[list[dict], dict]:
    """Solve `problems` (asked at `cfg.effort`) of `task` with the configured search; the verified
    examples and round statistics."""
    from tqdm import tqdm

    from ttscale.strategies import solve

    params = search_params(cfg)
    examples, solved, flops = [], 0, 0.0
    for p in tqdm(problems, disable=not progress, desc=f"search {task.name} ({cfg.strategy})"):
        sol = solve(p, task, generator, cfg.strategy, params, scorer)
        flops += sol.cost.flops
        kept = verified_solutions(task, p, sol, cfg.keep_per_problem)
        solved += bool(kept)
        examples += [{"problem_id": p.id, "task": p.task, "level": p.level, "prompt": p.prompt, "solution": s}
                     for s in kept]
    stats = {"problems": len(problems), "solved": solved / max(len(problems), 1), "kept": len(examples),
             "search_flops": flops}
    return examples, stats


def search_tasks(tasks: Sequence[Task], problems: Sequence[Problem], generator, cfg: DistillConfig,
                 progress: bool = False) -> tuple[list[dict], dict]:
    """`search_round` over each task's share of `problems`: the examples of all tasks, and the
    statistics over all problems with the fraction solved per task."""
    from ttscale.rewards import get_scorer

    examples, per_task = [], {}
    for task in tasks:
        scorer = get_scorer(cfg.scorer, task=task, generator=generator, model=cfg.scorer_model)
        found, per_task[task.name] = search_round(task, [p for p in problems if p.task == task.name],
                                                  generator, cfg, scorer, progress)
        examples += found
    n = sum(s["problems"] for s in per_task.values())
    stats = {"problems": n, "solved": sum(s["solved"] * s["problems"] for s in per_task.values()) / max(n, 1),
             "kept": len(examples), "search_flops": sum(s["search_flops"] for s in per_task.values()),
             "solved_per_task": {t: s["solved"] for t, s in per_task.items()}}
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
def _greedy_accuracy(model_dir: str, tasks: Sequence[Task], cfg: DistillConfig) -> dict[str, dict[int, float]]:
    """Held-out greedy accuracy per task and level, the problems asked at `cfg.effort`."""
    if cfg.eval_problems == 0:
        return {}
    from ttscale.train.rl import evaluate_levels

    return {t.name: {lv: r.greedy_acc for lv, r in zip(cfg.levels, evaluate_levels(
                model_dir, t.name, cfg.levels, split="heldout", num_problems=cfg.eval_problems, n=0,
                seed=cfg.seed, backend=cfg.backend, effort=cfg.effort, device=cfg.device))}
            for t in tasks}


def _accuracy(acc: dict[str, dict[int, float]]) -> dict:
    """A round's accuracy record: the mean over all tasks and levels, per level (the mean over
    tasks) and per task and level."""
    levels = next(iter(acc.values()), {})
    return {"accuracy": _mean([a for per in acc.values() for a in per.values()]),
            "accuracy_per_level": {lv: sum(per[lv] for per in acc.values()) / len(acc) for lv in levels},
            "accuracy_per_task_level": acc}


def _round_problems(tasks: Sequence[Task], cfg: DistillConfig, r: int) -> list[Problem]:
    """Round `r`'s fresh train problems, spread over tasks x levels, asked at `cfg.effort`."""
    cells = [(t, lv) for t in tasks for lv in cfg.levels]
    per = _spread(cfg.problems_per_round, len(cells))
    out = [p for (t, lv), k in zip(cells, per) if k
           for p in t.problems("train", lv, k, seed=cfg.seed * 1000 + r)]
    random.Random(cfg.seed * 1000 + r).shuffle(out)
    return [apply_effort(p, cfg.effort) for p in out]


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
    from ttscale.train.sft import SFTConfig, train_sft

    out = Path(out)
    parent = resolve_model(model)
    tasks = distill_tasks(cfg)
    check_distill_config(cfg, tasks)
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
        record({"round": 0, "model": Path(parent).name, **_accuracy(_greedy_accuracy(parent, tasks, cfg))})
    for r in range(len(rows), cfg.rounds + 1):
        prev = out / f"round-{r - 1}"
        policy = parent if r == 1 else str(prev if prev.exists() else out)
        generator = load_generator(policy, backend=cfg.backend, device=cfg.device)
        examples, stats = search_tasks(tasks, _round_problems(tasks, cfg, r), generator, cfg, progress)
        (out / f"data-round-{r}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
        round_dir = out / f"round-{r}"
        pairs = [(e["prompt"], e["solution"]) for e in examples]
        if pairs:
            steps = finetune_steps(pairs, cfg)
            sft = SFTConfig(init_from=parent, tasks=cfg.task_names, levels=list(cfg.levels), steps=steps,
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
        record({"round": r, **stats, "sft_steps": steps, **_accuracy(_greedy_accuracy(str(round_dir), tasks, cfg))})

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


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _params(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
