"""Options shared by the commands that load a model or a task: the backend, the OpenAI-compatible
servers (their URLs, the served model's shape, the request timeout and retries), the torch
engine's KV memory, speculative decoding and sparse attention, few-shot prompts. One definition
each, so that `eval`, `solve` and `sweep` spell and document them alike (`serve` names its
upstream's the same way with an `--upstream-` prefix)."""
from __future__ import annotations

import json
import math
import re
from typing import Any, Optional

import typer

from ttscale.errors import TTScaleError

BACKEND = typer.Option("torch", "--backend", help="torch (own engine), hf (transformers) or "
                       "openai (a server: --base-url).")
BASE_URL = typer.Option([], "--base-url", help="OpenAI-compatible server URL (openai); repeat "
                        "it (or separate by commas) to spread requests over several servers, "
                        "least-loaded first.")
SHAPE_FROM = typer.Option(None, "--shape-from", help="The served model's shape, to count its "
                          "FLOPs (openai): a HF model directory or config.json, a .gguf file "
                          "or a shipped name. Without it (or --n-params/--n-layer/--d-model) "
                          "FLOPs are reported as unknown.")
N_PARAMS = typer.Option(None, "--n-params", help="Served model's parameters, with --n-layer "
                        "and --d-model (openai).")
N_LAYER = typer.Option(None, "--n-layer", help="Served model's layers (openai).")
D_MODEL = typer.Option(None, "--d-model", help="Served model's hidden size (openai).")
TIMEOUT = typer.Option(None, "--timeout", help="Seconds one request to the server may take "
                       "(openai; default 600). A request that times out fails at once and is "
                       "not retried: the same generation would be as slow again.")
MAX_RETRIES = typer.Option(None, "--max-retries", help="Retries of a failed request (openai; "
                           "default 4), with exponential backoff: on 429, 5xx, a dropped "
                           "connection or a connect timeout (10 s); 0: none.")
ENDPOINT_CONCURRENCY = typer.Option(None, "--endpoint-concurrency", help="Requests in flight "
                                    "per server (openai; default: no per-server cap). 2 suits "
                                    "servers that generate one request at a time (llama.cpp): "
                                    "the rest wait here and go to whichever server frees first.")
KV_MEMORY = typer.Option(None, "--kv-memory", help="Bytes the torch engine's paged KV "
                         "pool may take, e.g. 512M or 2G (K, M, G, T: powers of 1024): when it "
                         "is full the youngest sequences are preempted and recomputed, outputs "
                         "are unchanged (torch; default: as much as a batch needs).")
SPARSE_ATTENTION = typer.Option(None, "--sparse-attention", help="Block-sparse decode attention "
                                "of the torch engine, e.g. block=8,sink=1,window=2,topk=3 (Quest: "
                                "sink, window and top-k blocks; default: dense).")
SPECULATIVE = typer.Option(None, "--speculative", help="Speculative decoding in the torch engine: "
                           "draft=ngram or a smaller family model, k=tokens drafted per round, "
                           "e.g. draft=ttscale-small-long,k=10 (or a JSON object with those "
                           "keys). Greedy outputs are unchanged; sampled ones keep their "
                           "distribution.")
SHOTS = typer.Option(0, "--shots", help="Worked examples before each question, for base "
                     "models on JSONL tasks (GSM8K, MATH); 0: zero-shot instructions.")
EFFORT = typer.Option("low", "--effort", help="low: short chains; high: the long, "
                      "step-checkable mode of built-in tasks (default max tokens raised to fit); "
                      "auto: the model names its mode after the question (models trained for it).")
SHOTS_FROM = typer.Option(None, "--shots-from", help="Train file of worked examples for "
                          "--shots (default for X_test.jsonl: X_train.jsonl beside it); never "
                          "the test file.")


SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
SIZE_FORMS = "bytes as an integer, or a number with K, M, G or T (powers of 1024), e.g. 512M, 2G"


def parse_speculative(flag: str, text: Optional[str]) -> Optional[dict[str, Any]]:
    """`--speculative` as the engine's option: "draft=X,k=N[,ngram=M]" or a JSON object, checked
    by `engine.speculative.parse_spec` (None: not given)."""
    if text is None:
        return None
    from ttscale.engine.speculative import parse_spec

    accepted = 'draft=ngram or a model, k=1..16, e.g. draft=ngram,k=4, or {"draft": ..., "k": ...}'
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise TTScaleError(f"{flag} {text!r} is not valid JSON ({e.msg}); "
                               f"accepted: {accepted}") from None
    else:
        spec = {}
        for part in text.split(","):
            key, eq, raw = part.partition("=")
            key, raw = key.strip(), raw.strip()
            if not eq or not key or not raw:
                raise TTScaleError(f"{flag} {text!r}: {part.strip()!r} is not key=value; "
                                   f"accepted: {accepted}")
            spec[key] = int(raw) if re.fullmatch(r"-?\d+", raw) else raw
    if isinstance(spec, dict) and "draft" not in spec:
        raise TTScaleError(f"{flag} {text!r} names no draft; accepted: {accepted}")
    cfg = parse_spec(spec)
    return {"draft": cfg.draft, "k": cfg.k, "ngram": cfg.ngram}


def parse_size(flag: str, text: Optional[str]) -> Optional[int]:
    """A memory size such as `536870912`, `512M`, `1.5G` or `2GiB` in bytes (None: not given)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])i?b?|b)?\s*", text, re.IGNORECASE)
    if not m:
        raise TTScaleError(f"{flag} {text!r} is not a size; accepted: {SIZE_FORMS}")
    size = int(float(m.group(1)) * SIZE_UNITS[(m.group(2) or "").upper()])
    if size < 1:
        raise TTScaleError(f"{flag} {text!r} is out of range; accepted: at least 1 byte "
                           f"({SIZE_FORMS})")
    return size


def check_timeout(flag: str, seconds: Optional[float]) -> None:
    """A request timeout is a positive, finite number of seconds (or none: the default)."""
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise TTScaleError(f"{flag} {seconds!r} is out of range; accepted: seconds > 0")


def check_retries(flag: str, retries: Optional[int]) -> None:
    """A retry count is an integer >= 0 (or none: the default)."""
    if retries is not None and retries < 0:
        raise TTScaleError(f"{flag} {retries!r} is out of range; accepted: an integer >= 0 "
                           "(0: no retries)")


def generator_options(backend: str, base_url: list[str], shape_from: Optional[str],
                      n_params: Optional[int], n_layer: Optional[int],
                      d_model: Optional[int], timeout: Optional[float] = None,
                      max_retries: Optional[int] = None,
                      kv_memory: Optional[str] = None,
                      endpoint_concurrency: Optional[int] = None,
                      sparse_attention: Optional[str] = None,
                      speculative: Optional[str] = None) -> dict[str, Any]:
    """The `generator_options` of the Python API from the shared options; server options are
    refused for local backends, engine options for the others."""
    check_timeout("--timeout", timeout)
    check_retries("--max-retries", max_retries)
    if endpoint_concurrency is not None and endpoint_concurrency < 1:
        raise TTScaleError(f"--endpoint-concurrency {endpoint_concurrency!r} is out of range; "
                           "accepted: an integer >= 1")
    kv = parse_size("--kv-memory", kv_memory)
    sparse = None
    if sparse_attention is not None:  # the engine (and torch) only when the flag is given
        from ttscale.engine.sparse import parse_sparse

        sparse = parse_sparse(sparse_attention)
    engine = {k: v for k, v in (("kv_memory", kv), ("sparse_attention", sparse and str(sparse)),
                                ("speculative", parse_speculative("--speculative", speculative)))
              if v is not None}  # the torch engine's options; each key is its flag's name
    if engine and backend != "torch":
        flag = "--" + next(iter(engine)).replace("_", "-")
        raise TTScaleError(f"{flag} applies only to --backend torch (the own engine), "
                           f"not {backend!r}")
    urls = [u.strip() for part in base_url for u in part.split(",") if u.strip()]
    shape = {k: v for k, v in (("shape_from", shape_from), ("n_params", n_params),
                               ("n_layer", n_layer), ("d_model", d_model)) if v is not None}
    server = {k: v for k, v in (("timeout", timeout), ("max_retries", max_retries),
                                ("endpoint_concurrency", endpoint_concurrency)) if v is not None}
    if backend != "openai":
        given = (["--base-url"] if urls else []) + [f"--{k.replace('_', '-')}"
                                                    for k in (*shape, *server)]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise TTScaleError(f"{', '.join(given)} {verb} only to --backend openai, not "
                               f"{backend!r}")
        return engine
    if not urls:
        raise TTScaleError("--backend openai needs --base-url (the server's URL; repeat it for "
                           "several servers)")
    return {"base_url": urls, **shape, **server}
