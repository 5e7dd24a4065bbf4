"""`ttscale bench engine`: the torch engine against transformers generate(); see eval.bench_engine."""
from __future__ import annotations

import json

import typer

from ttscale.cli.app import bench_app
from ttscale.errors import TTScaleError


@bench_app.command("engine")
def bench_engine_cmd(
    model: str = typer.Option(None, "--model", help="Shipped model name or path (default: the largest shipped)."),
    n: str = typer.Option("1,16,64", "--n", help="Comma-separated sample counts."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens to generate per sample."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
    repeats: int = typer.Option(1, "--repeats", help="Timed runs per n (the best counts)."),
    compile: bool = typer.Option(False, "--compile", help="Run the engine's forward via torch.compile."),
    threads: int = typer.Option(0, "--threads", help="torch threads for both sides (0: torch's default)."),
    tree_depth: int = typer.Option(6, "--tree-depth", help="Rounds of the tree-search workload."),
    workload: str = typer.Option("mixed", "--workload", help="Throughput prompts: mixed (one per task and level) or single (one arith prompt)."),
    note: str = typer.Option("", "--note", help="A remark recorded with the run in docs/benchmarks.md."),
    no_doc: bool = typer.Option(False, "--no-doc", help="Do not append to docs/benchmarks.md."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Tokens/s of the torch engine vs transformers at each n, prefix-cache savings on a tree
    search, and peak memory; the run is appended to docs/benchmarks.md."""
    from ttscale.eval.bench_engine import append_to_doc, bench_engine, table

    try:
        ns = [int(x) for x in n.split(",") if x.strip()]
    except ValueError:
        raise TTScaleError(f"--n {n!r} is not a list of integers; accepted: e.g. 1,16,64") from None
    if not ns or min(ns) < 1:
        raise TTScaleError(f"--n {n!r} is out of range; accepted: positive integers, e.g. 1,16,64")
    if max_tokens < 1:
        raise TTScaleError(f"--max-tokens {max_tokens} is out of range; accepted: >= 1")
    if threads < 0:
        raise TTScaleError(f"--threads {threads} is out of range; accepted: >= 0")
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = bench_engine(model, ns, max_tokens, device, dtype, repeats, compile, tree_depth, workload)
    if not no_doc:
        append_to_doc(result, note)
    print(json.dumps(result, indent=2) if as_json else table(result))
