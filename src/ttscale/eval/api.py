"""The evaluation grid behind `ttscale eval`: models x tasks x levels."""
from __future__ import annotations

import sys

from tqdm import tqdm

from typing import Any

from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.eval.card import write_card
from ttscale.eval.evaluate import MAX_TOKENS, EvalResult, evaluate
from ttscale.models.registry import list_models, resolve_model
from ttscale.tasks import BUILTIN_TASKS, BuiltinTask, get_task
from ttscale.tasks.effort import apply_effort, check_effort, max_tokens_for


def evaluate_grid(models: list[str] | None = None, tasks: list[str] | None = None,
                  levels: list[int] | None = None, num_problems: int = 24, n: int = 8,
                  split: str = "test", seed: int = 0, backend: str = "torch",
                  write_cards: bool = False, progress: bool = False, shots: int = 0,
                  shots_from: str | None = None, max_tokens: int | None = None,
                  generator_options: dict[str, Any] | None = None,
                  effort: str = "low", temperature: float = 1.0) -> list[EvalResult]:
    """Evaluate every (model, task, level); with `write_cards`, update each model's card.

    The n samples per problem are drawn at `temperature` (> 0; greedy is always measured too).

    `effort` asks the problems in the short ("low") or the long ("high") mode; `max_tokens`
    defaults to a limit that fits the mode's chains.

    `shots`/`shots_from`: few-shot prompts on JSONL tasks. With backend "openai", `models` are
    the names on the server at `generator_options["base_url"]` (other options: the shape).
    """
    if num_problems < 1:
        raise out_of_range("num_problems", num_problems, ">= 1")
    if n < 0:
        raise out_of_range("n", n, ">= 0")
    if not temperature > 0:
        raise out_of_range("temperature", temperature, "> 0 (the samples; greedy is measured "
                           "anyway)")
    max_tokens = max_tokens or max_tokens_for(check_effort(effort), MAX_TOKENS)
    options = dict(generator_options or {})
    if backend == "openai":
        if not models:
            raise TTScaleError("--backend openai needs --model: the model's name on the server")
        model_paths = list(models)
    else:
        model_paths = [resolve_model(m) for m in models] if models else [
            m.path for m in list_models() if m.kind == "policy"]
    task_objs = [get_task(t, shots=shots, shots_from=shots_from)
                 for t in (tasks or list(BUILTIN_TASKS))]
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
            generators[mp] = load_generator(options["base_url"], backend="openai",
                                            model_name=mp, **{k: v for k, v in options.items()
                                                              if k != "base_url"}) \
                if backend == "openai" else load_generator(mp, backend=backend, **options)
        gen = generators[mp]
        problems = [apply_effort(p, effort)
                    for p in t.problems(split=split, level=lv, n=num_problems, seed=seed)]
        rows.append(evaluate(gen, t, problems, n=n, temperature=temperature, seed=seed,
                             max_tokens=max_tokens))
    if write_cards:
        for mp in model_paths:
            name = mp.rstrip("/").split("/")[-1]
            cmd = (f"ttscale eval --model {name} --num-problems {num_problems} --n {n} --split {split} "
                   f"--seed {seed}" + (f" --effort {effort}" if effort != "low" else "")
                   + (f" --temperature {temperature}" if temperature != 1.0 else ""))
            write_card(mp, [r for r in rows if r.model == generators[mp].model_name],
                       eval_command=cmd)
    return rows

