"""`ttscale bench engine`: the torch engine against transformers generate(); see bench.engine."""
from __future__ import annotations

import json

import typer

from ttscale.cli.app import bench_app
from ttscale.errors import TTScaleError


@bench_app.command("engine")
def bench_engine_cmd(
    model: str = typer.Option(None, "--model", help="Shipped model name or path (default: the largest shipped)."),
    n: str = typer.Option(None, "--n", help="Comma-separated sample counts (default 1,16,64; spec: 1,16; long: 64; sparse: 16, its long-context part)."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens to generate per sample (sparse: in its long-context part; chains get 768)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
    repeats: int = typer.Option(3, "--repeats", help="Timed runs per n, engine and transformers alternating (the median counts)."),
    compile: bool = typer.Option(False, "--compile", help="Run the engine's forward via torch.compile."),
    threads: int = typer.Option(0, "--threads", help="torch threads for both sides (0: torch's default)."),
    tree_depth: int = typer.Option(6, "--tree-depth", help="Rounds of the tree-search workload."),
    workload: str = typer.Option("mixed", "--workload", help="mixed (one prompt per task and level), single (one arith prompt), spec (speculative vs plain decoding on long arith chains), long (n samples of a 512-token prompt, unbounded vs under kv_memory) or sparse (block-sparse decode attention vs dense on greedy long-mode chains, and on a long prompt)."),
    draft: str = typer.Option("ngram", "--draft", help="spec workload: the draft, ngram (prompt lookup) or a smaller family model."),
    k: int = typer.Option(4, "--k", help="spec workload: tokens drafted per round."),
    effort: str = typer.Option("low", "--effort", help="spec workload: low (short chains) or high (the long mode's digit-level chains)."),
    kv_fraction: float = typer.Option(0.1, "--kv-fraction", help="long workload: kv_memory as a fraction of the unbounded run's KV."),
    problems: int = typer.Option(50, "--problems", help="sparse workload: test problems (long mode, greedy)."),
    level: int = typer.Option(4, "--level", help="sparse workload: level of the problems."),
    task: str = typer.Option("arith", "--task", help="sparse workload: task of the chains, arith or countdown."),
    seed: int = typer.Option(0, "--seed", help="sparse workload: seed that draws the problems."),
    sparse: str = typer.Option(None, "--sparse", help="sparse workload: settings separated by ';', each block=B,sink=S,window=W,topk=K (default: block 16 sink 1 window 2 topk 2/4/8; block 8 sink 2 window 2 topk 2/4)."),
    out: str = typer.Option(".", "--out", help="Directory for the run's JSON and the benchmarks.md it appends to."),
    note: str = typer.Option("", "--note", help="A remark recorded with the run in OUT/benchmarks.md."),
    no_doc: bool = typer.Option(False, "--no-doc", help="Write nothing to OUT."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Tokens/s of the torch engine vs transformers at each n, prefix-cache savings on a tree
    search, and peak memory (or, with --workload spec, speculative decoding's speedup); the run
    is saved as OUT/bench-engine-WORKLOAD.json and appended to OUT/benchmarks.md."""
    from pathlib import Path

    from ttscale.bench.engine import (SPARSE_SETTINGS, append_to_doc, bench_engine, bench_long,
                                      bench_sparse, bench_spec, table)

    n = n or {"spec": "1,16", "long": "64", "sparse": "16"}.get(workload, "1,16,64")
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
    if repeats < 1:
        raise TTScaleError(f"--repeats {repeats} is out of range; accepted: >= 1")
    if workload == "sparse":
        from ttscale.tasks import LEVELS

        if level not in LEVELS:
            raise TTScaleError(f"--level {level} is out of range; accepted: {', '.join(map(str, LEVELS))}")
        if problems < 1:
            raise TTScaleError(f"--problems {problems} is out of range; accepted: >= 1")
        settings = [x.strip() for x in sparse.split(";") if x.strip()] if sparse else SPARSE_SETTINGS
        result = bench_sparse(model, problems, level, settings, ns[0], max_tokens, device=device,
                              dtype=dtype, repeats=repeats, task=task, seed=seed)
    elif workload == "spec":
        result = bench_spec(model, draft, k, ns, max_tokens, device, dtype, repeats, effort)
    elif workload == "long":
        if not 0 < kv_fraction <= 1:
            raise TTScaleError(f"--kv-fraction {kv_fraction} is out of range; accepted: a number in (0, 1]")
        result = bench_long(model, ns[0], max_tokens=max_tokens, kv_fraction=kv_fraction,
                            device=device, dtype=dtype, repeats=repeats)
    else:
        result = bench_engine(model, ns, max_tokens, device, dtype, repeats, compile, tree_depth,
                              workload)
    if not no_doc:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"bench-engine-{workload}.json").write_text(json.dumps(result, indent=1) + "\n")
        append_to_doc(result, note, folder / "benchmarks.md")
    print(json.dumps(result, indent=2) if as_json else table(result))
