"""`ttscale eval`: greedy, maj@n and pass@n of shipped models on built-in tasks."""
from __future__ import annotations

import json
import time
from typing import Optional

import typer

from ttscale.cli import options
from ttscale.cli.app import app
from ttscale.eval.api import evaluate_grid
from ttscale.eval.evaluate import MAX_TOKENS
from ttscale.tasks.effort import LONG_MAX_TOKENS


@app.command("eval")
def eval_cmd(
    model: Optional[list[str]] = typer.Option(None, "--model", help="Model name or path (repeatable); default: every shipped model."),
    task: Optional[list[str]] = typer.Option(None, "--task", help="Task name or .jsonl path (repeatable); default: every built-in task."),
    level: Optional[list[int]] = typer.Option(None, "--level", help="Level 1-5 (repeatable); default: all."),
    num_problems: int = typer.Option(24, "--num-problems", help="Problems per (task, level)."),
    n: int = typer.Option(8, "--n", help="Samples per problem for maj@n and pass@n (0: greedy only)."),
    split: str = typer.Option("test", help="train, heldout or test."),
    seed: int = typer.Option(0, help="Problem and sampling seed."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature of the n samples (> 0)."),
    backend: str = options.BACKEND,
    base_url: list[str] = options.BASE_URL,
    shape_from: Optional[str] = options.SHAPE_FROM,
    n_params: Optional[int] = options.N_PARAMS,
    n_layer: Optional[int] = options.N_LAYER,
    d_model: Optional[int] = options.D_MODEL,
    timeout: Optional[float] = options.TIMEOUT,
    max_retries: Optional[int] = options.MAX_RETRIES,
    endpoint_concurrency: Optional[int] = options.ENDPOINT_CONCURRENCY,
    kv_memory: Optional[str] = options.KV_MEMORY,
    sparse_attention: Optional[str] = options.SPARSE_ATTENTION,
    speculative: Optional[str] = options.SPECULATIVE,
    shots: int = options.SHOTS,
    shots_from: Optional[str] = options.SHOTS_FROM,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=f"Tokens per answer; default {MAX_TOKENS}, or {LONG_MAX_TOKENS} with --effort high or auto."),
    effort: str = options.EFFORT,
    card: bool = typer.Option(False, "--card", help="Write each model's card (README.md) with this table."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object for one row, else {'rows': [...]}."),
) -> None:
    """Evaluate models, greedy and sampled, on every requested task and level, as a table."""
    t0 = time.time()
    rows = evaluate_grid(models=model, tasks=task, levels=level, num_problems=num_problems, n=n,
                         split=split, seed=seed, backend=backend, write_cards=card,
                         progress=not as_json, shots=shots, shots_from=shots_from,
                         max_tokens=max_tokens, effort=effort, temperature=temperature,
                         generator_options=options.generator_options(
                             backend, base_url, shape_from, n_params, n_layer, d_model,
                             timeout, max_retries, kv_memory, endpoint_concurrency,
                             sparse_attention, speculative))
    if as_json:
        out = [{k: None if v != v else v for k, v in r.to_dict().items()}  # NaN: unknown
               for r in rows]
        print(json.dumps(out[0] if len(out) == 1 else {"rows": out}, indent=2))
        return
    from ttscale.eval.evaluate import format_table

    print(format_table(rows))
    print(f"\n{len(rows)} rows in {time.time() - t0:.0f} s")
