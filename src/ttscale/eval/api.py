"""The evaluation grid behind `ttscale eval`: models x tasks x levels."""
from __future__ import annotations

import sys

from tqdm import tqdm

from ttscale.errors import out_of_range, unknown
from ttscale.eval.card import write_card
from ttscale.eval.evaluate import EvalResult, evaluate
from ttscale.models.registry import list_models, resolve_model
from ttscale.tasks import BUILTIN_TASKS, BuiltinTask, get_task


def evaluate_grid(models: list[str] | None = None, tasks: list[str] | None = None,
                  levels: list[int] | None = None, num_problems: int = 24, n: int = 8,
                  split: str = "test", seed: int = 0, backend: str = "torch",
                  write_cards: bool = False, progress: bool = False) -> list[EvalResult]:
    """Evaluate every (model, task, level); with `write_cards`, update each model's card."""
    if num_problems < 1:
        raise out_of_range("num_problems", num_problems, ">= 1")
    if n < 0:
        raise out_of_range("n", n, ">= 0")
    model_paths = [resolve_model(m) for m in models] if models else [
        m.path for m in list_models() if m.kind == "policy"]
    task_objs = [get_task(t) for t in (tasks or list(BUILTIN_TASKS))]
    for t in task_objs:  # validate every level before any work starts
        for lv in levels or []:
            if isinstance(t, BuiltinTask) and lv not in t.levels:
                raise unknown("level", lv, t.levels)
    from ttscale.engine import load_generator

    jobs = [(mp, t, lv) for mp in model_paths for t in task_objs
            for lv in ((levels or list(t.levels)) if isinstance(t, BuiltinTask) else (levels or [None]))]
    rows: list[EvalResult] = []
    bar = tqdm(jobs, disable=not progress, desc="eval", file=sys.stderr)
    generators = {}
    for mp, t, lv in bar:
        if mp not in generators:
            generators[mp] = load_generator(mp, backend=backend)
        gen = generators[mp]
        problems = t.problems(split=split, level=lv, n=num_problems, seed=seed)
        rows.append(evaluate(gen, t, problems, n=n, seed=seed))
    if write_cards:
        for mp in model_paths:
            name = mp.rstrip("/").split("/")[-1]
            cmd = f"ttscale eval --model {name} --num-problems {num_problems} --n {n} --split {split} --seed {seed}"
            write_card(mp, [r for r in rows if r.model == generators[mp].model_name],
                       eval_command=cmd)
    return rows

