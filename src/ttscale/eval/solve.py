"""`ttscale solve` as a Python function: one strategy over a set of problems, summarised.

`run_solve` loads the model and scorer, draws the problems, runs the strategy on each and
returns `strategies.summarize`'s dict (accuracy, mean cost, one record per problem). With
`samples_out`, every candidate is also written as a store for `ttscale select` (sample once,
select many).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ttscale.errors import TTScaleError, out_of_range
from ttscale.strategies import Solution, params_at_effort, solve_many, summarize
from ttscale.tasks.effort import apply_effort
from ttscale.tasks import BuiltinTask, get_task
from ttscale.tasks.base import Task
from ttscale.types import Problem

DEFAULT_LEVEL = 3  # built-in tasks; a JSONL task uses all its problems unless a level is given


def load_problems(task: Task, level: int | None, num_problems: int, split: str = "test",
                  seed: int = 0) -> list[Problem]:
    """The problems `ttscale solve` runs on."""
    if num_problems < 1:
        raise out_of_range("num_problems", num_problems, ">= 1")
    if isinstance(task, BuiltinTask):
        return task.problems(split=split, level=DEFAULT_LEVEL if level is None else level,
                             n=num_problems, seed=seed)
    return task.problems(split=split, level=level, n=num_problems, seed=seed)


def samples_record(task: Task, problem: Problem, solution: Solution) -> dict[str, Any]:
    """One store record (`ttscale select` input) from a solution's candidates."""
    cands = solution.candidates
    rec: dict[str, Any] = {
        "id": problem.id, "problem": problem.question, "answer": problem.answer,
        "responses": [c.text for c in cands], "preds": [c.answer for c in cands],
        "correct": [bool(task.check(problem, c.answer)) for c in cands],
    }
    if cands and all(c.score is not None for c in cands):
        rec["scores"] = [c.step_scores if c.step_scores else c.score for c in cands]
    return rec


def write_samples(path: str | Path, task: Task, problems: Sequence[Problem],
                  solutions: Sequence[Solution]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for p, s in zip(problems, solutions):
            f.write(json.dumps(samples_record(task, p, s)) + "\n")


def write_trees(directory: str | Path, problems, solutions) -> list[Path]:
    """Save every solution's search tree as JSON and as one HTML page (no network)."""
    from ttscale.eval.trees import write_tree_html
    from ttscale.strategies.tree import Tree

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for p, s in zip(problems, solutions):
        if s.tree is None:
            continue
        tree = Tree.from_dict(s.tree)
        tree.save(directory / f"{p.id}.json")
        written.append(write_tree_html(tree, directory / f"{p.id}.html", title=p.question))
    return written


def run_solve(model: str, task: str = "arith", level: int | None = None, num_problems: int = 10,
              strategy: str = "greedy", params: Mapping[str, Any] | None = None,
              scorer: str | None = None, scorer_model: str | None = None,
              aggregate: str = "last", split: str = "test", problem_seed: int = 0,
              backend: str = "torch", generator_options: Mapping[str, Any] | None = None,
              samples_out: str | Path | None = None,
              trees_out: str | Path | None = None, shots: int = 0,
              shots_from: str | None = None, effort: str = "low") -> dict[str, Any]:
    """Run `strategy` on `num_problems` problems of `task`; accuracy, mean cost, per problem.

    `model` is a shipped model name or directory, or with backend "openai" the model's name on
    the server, whose URL is `generator_options["base_url"]`; other `generator_options` go to
    `ttscale.engine.load_generator` (e.g. `shape_from`, a local checkpoint of the same shape,
    so that FLOPs of a remote model are counted). With `trees_out`, each search tree is saved
    as `<problem id>.json` and a self-contained `<problem id>.html` in that directory.
    `shots` worked examples from `shots_from` prefix each prompt (JSONL tasks, base models).
    A remote model of unknown shape gives `flops_known: False` and FLOPs of None.
    `effort` "high" asks every problem in the long, step-checkable mode (tasks/effort.py).
    """
    from ttscale.rewards import get_scorer

    from ttscale.errors import unknown
    from ttscale.rewards import SCORERS

    task_obj = get_task(task, shots=shots, shots_from=shots_from)
    checked = params_at_effort(strategy, dict(params or {}), effort)  # fails before any loading
    if scorer is not None and scorer not in SCORERS:
        raise unknown("scorer", scorer, SCORERS)
    if scorer == "checker":
        from ttscale.rewards.checker import require_checkable

        require_checkable(task_obj)  # before any loading: countdown yes, arith and files no
    problems = [apply_effort(p, effort)
                for p in load_problems(task_obj, level, num_problems, split, problem_seed)]
    generator = _load_generator(model, backend, dict(generator_options or {}))
    scorer_obj = None
    if scorer is not None:
        scorer_obj = get_scorer(scorer, task=task_obj, generator=generator, model=scorer_model,
                                aggregate=aggregate)
    solutions = solve_many(problems, task_obj, generator, strategy, checked, scorer_obj)
    if samples_out is not None:
        write_samples(samples_out, task_obj, problems, solutions)
    if trees_out is not None:
        write_trees(trees_out, problems, solutions)
    out = summarize(task_obj, problems, solutions)
    out = {"model": model, "task": task, "level": problems[0].level if problems else level,
           "strategy": strategy, "scorer": scorer, "params": solutions[0].params if solutions
           else {}, "shots": shots, "effort": effort, **_unknown_as_none(out)}
    out["flops_known"] = bool(getattr(generator.shape, "known", True))
    close = getattr(generator, "close", None)
    if callable(close):
        close()
    return out


def _unknown_as_none(value: Any) -> Any:
    """NaN (FLOPs of a model of unknown shape) as None, so that JSON says "unknown" (null)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _unknown_as_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unknown_as_none(v) for v in value]
    return value


def _load_generator(model: str, backend: str, options: dict[str, Any]) -> Any:
    """The policy: a local model, or with backend "openai" the model `model` served at
    `options["base_url"]` (FLOPs counted from `shape_from` or n_params/n_layer/d_model)."""
    from ttscale.engine import load_generator

    url = options.pop("base_url", None)
    if backend == "openai":
        if not url:
            raise TTScaleError("--backend openai needs --base-url (the server's URL; several "
                               "comma-separated)")
        return load_generator(url, backend="openai", model_name=model, **options)
    if url:
        raise TTScaleError(f"--base-url is only for --backend openai, not {backend!r}")
    return load_generator(model, backend=backend, **options)


def parse_param_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """`key=value` strings (from `--param`) as a dict; values stay text until get_params."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TTScaleError(f"--param {pair!r} is not key=value; accepted: e.g. --param "
                               "window=4")
        out[key.strip()] = value.strip()
    return out
