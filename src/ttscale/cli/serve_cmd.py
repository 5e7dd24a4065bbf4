"""`ttscale serve` (see ttscale.serve.build.serve) and `ttscale bench serve` (see
ttscale.bench.serve)."""
from __future__ import annotations

import json

import typer

from ttscale.cli import options
from ttscale.cli.app import app, bench_app
from ttscale.serve.limits import Limits


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(None, "--model", help="Shipped model name or directory for the "
                              "embedded engine (default: the largest shipped model)."),
    upstream: list[str] = typer.Option([], "--upstream", help="Base URL of an OpenAI-compatible "
                                       "server (vLLM, SGLang, llama.cpp, Ollama); repeatable."),
    upstream_model: str = typer.Option(None, "--upstream-model", help="The model's name on the "
                                       "upstream (default: the first one it lists)."),
    upstream_params: int = typer.Option(0, "--upstream-params", help="Parameters of the "
                                        "upstream model (for FLOPs)."),
    upstream_layers: int = typer.Option(0, "--upstream-layers", help="Its layers (for FLOPs)."),
    upstream_d_model: int = typer.Option(0, "--upstream-d-model", help="Its width (for FLOPs)."),
    upstream_shape: str = typer.Option(None, "--upstream-shape", help="Read the upstream "
                                       "model's shape from this local checkpoint instead."),
    upstream_chat: bool = typer.Option(False, "--upstream-chat", help="Strategies sample "
                                       "through the upstream's chat endpoint."),
    upstream_api_key: str = typer.Option(None, "--upstream-api-key", envvar="TTSCALE_UPSTREAM_API_KEY",
                                         help="Key for the upstream."),
    upstream_timeout: float = typer.Option(None, "--upstream-timeout", help="Seconds one "
                                           "upstream call may take (default: --request-"
                                           "timeout); a timed-out call is not retried."),
    upstream_max_retries: int = typer.Option(None, "--upstream-max-retries", help="Retries of "
                                             "a failed upstream call (default 4), with "
                                             "exponential backoff: on 429, 5xx, a dropped "
                                             "connection or a connect timeout; 0: none."),
    api_key_file: list[str] = typer.Option([], "--api-key-file", help="File of accepted API "
                                           "keys, one per line (chmod 600); repeatable. Or set "
                                           "$TTSCALE_API_KEY (one key) or $TTSCALE_API_KEYS "
                                           "(comma-separated). No key anywhere: open."),
    api_key: list[str] = typer.Option([], "--api-key", help="An accepted API key on the command "
                                      "line, where other local users can read it: prefer "
                                      "--api-key-file or $TTSCALE_API_KEY."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port"),
    plan: str = typer.Option(None, "--plan", help="Compute plan (from `ttscale plan`) for "
                             "strategy 'auto'."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
    kv_memory: str = options.KV_MEMORY,
    sparse_attention: str = options.SPARSE_ATTENTION,
    speculative: str = options.SPECULATIVE,
    max_n: int = typer.Option(Limits.max_n, "--max-n", help="Most choices (n) per request."),
    max_samples: int = typer.Option(Limits.max_samples, "--max-samples",
                                    help="Most samples one strategy run may draw."),
    max_tokens: int = typer.Option(Limits.max_tokens, "--max-tokens"),
    max_budget_flops: float = typer.Option(Limits.max_budget_flops, "--max-budget-flops"),
    max_prompt_chars: int = typer.Option(Limits.max_prompt_chars, "--max-prompt-chars"),
    max_body_bytes: int = typer.Option(Limits.max_body_bytes, "--max-body-bytes"),
    max_concurrency: int = typer.Option(Limits.max_concurrency, "--max-concurrency",
                                        help="Requests worked on at once."),
    max_queue: int = typer.Option(Limits.max_queue, "--max-queue",
                                  help="Requests waiting beyond those; then 429."),
    request_timeout: float = typer.Option(Limits.request_timeout_s, "--request-timeout",
                                          help="Seconds per request; then 504."),
    access_log: bool = typer.Option(False, "--access-log", help="Log each request's path and "
                                    "status (never bodies or keys)."),
) -> None:
    """An OpenAI-compatible server that answers with test-time compute."""
    from ttscale.serve.build import ServeOptions, serve

    limits = Limits(max_n=max_n, max_samples=max_samples, max_tokens=max_tokens,
                    max_budget_flops=max_budget_flops, max_prompt_chars=max_prompt_chars,
                    max_body_bytes=max_body_bytes, max_concurrency=max_concurrency,
                    max_queue=max_queue, request_timeout_s=request_timeout)
    serve(ServeOptions(model=model, upstream=list(upstream), upstream_model=upstream_model,
                       upstream_params=upstream_params, upstream_layers=upstream_layers,
                       upstream_d_model=upstream_d_model, upstream_shape=upstream_shape,
                       upstream_chat=upstream_chat, upstream_api_key=upstream_api_key,
                       upstream_timeout=upstream_timeout,
                       upstream_max_retries=upstream_max_retries,
                       api_keys=list(api_key), api_key_files=list(api_key_file), host=host,
                       port=port, plan=plan, device=device, dtype=dtype,
                       kv_memory=options.parse_size("--kv-memory", kv_memory),
                       sparse_attention=sparse_attention,
                       speculative=options.parse_speculative("--speculative", speculative),
                       limits=limits,
                       access_log=access_log))


@bench_app.command("serve")
def bench_serve_cmd(
    clients: int = typer.Option(64, "--clients", help="Concurrent clients."),
    workload: str = typer.Option("load", "--workload", help="load: greedy, majority-8, beam "
                                 "search and 5% malformed requests; stream: short streamed "
                                 "greedy requests, one client alone then --clients at once "
                                 "(time to first token, tokens/s)."),
    seconds: float = typer.Option(60.0, "--seconds", help="How long they send requests."),
    model: str = typer.Option(None, "--model", help="Shipped model name or directory "
                              "(default: the largest shipped model)."),
    max_concurrency: int = typer.Option(Limits.max_concurrency, "--max-concurrency"),
    max_queue: int = typer.Option(Limits.max_queue, "--max-queue"),
    max_tokens: int = typer.Option(48, "--max-tokens", help="Tokens per completion."),
    disconnects: int = typer.Option(0, "--disconnects", help="Then this many streaming clients "
                                    "that go away at each stage (sent, role chunk, first token, "
                                    "queued); reports anything left queued or running."),
    out: str = typer.Option(".", "--out", help="Directory for the run's JSON and the "
                            "benchmarks.md it appends to."),
    note: str = typer.Option("", "--note", help="A remark recorded with the run in "
                             "OUT/benchmarks.md."),
    no_doc: bool = typer.Option(False, "--no-doc", help="Write nothing to OUT."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """K concurrent clients for T seconds against a loopback server (greedy, majority-8, beam
    search, 5% malformed): p50/p99 per kind, statuses, leaks; the run is saved as
    OUT/bench-serve-WORKLOAD.json and appended to OUT/benchmarks.md."""
    from pathlib import Path

    from ttscale.bench.serve import (append_to_doc, bench_serve, bench_stream, stream_table,
                                     table)
    from ttscale.errors import unknown

    if workload == "stream":
        result = bench_stream(clients=clients, seconds=seconds, model=model,
                              max_tokens=max_tokens)
        text = stream_table(result)
    elif workload == "load":
        result = bench_serve(clients=clients, seconds=seconds, model=model,
                             max_concurrency=max_concurrency, max_queue=max_queue,
                             max_tokens=max_tokens, disconnects=disconnects)
        text = table(result)
    else:
        raise unknown("workload", workload, ["load", "stream"])
    if not no_doc:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"bench-serve-{workload}.json").write_text(json.dumps(result, indent=1) + "\n")
        append_to_doc(result, note, folder / "benchmarks.md")
    print(json.dumps(result, indent=2) if as_json else text)
