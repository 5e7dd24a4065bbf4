"""Options shared by the commands that load a model or a task: the backend, the OpenAI-compatible
servers (their URLs, the served model's shape, the request timeout and retries), few-shot
prompts. One definition each, so that `eval`, `solve` and `sweep` spell and document them alike
(`serve` names its upstream's the same way with an `--upstream-` prefix)."""
from __future__ import annotations

import math
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
SHOTS = typer.Option(0, "--shots", help="Worked examples before each question, for base "
                     "models on JSONL tasks (GSM8K, MATH); 0: zero-shot instructions.")
EFFORT = typer.Option("low", "--effort", help="low: short chains; high: the long, "
                      "step-checkable mode of built-in tasks (default max tokens raised to fit).")
SHOTS_FROM = typer.Option(None, "--shots-from", help="Train file of worked examples for "
                          "--shots (default for X_test.jsonl: X_train.jsonl beside it); never "
                          "the test file.")


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
                      max_retries: Optional[int] = None) -> dict[str, Any]:
    """The `generator_options` of the Python API from the shared options; server options are
    refused for local backends."""
    check_timeout("--timeout", timeout)
    check_retries("--max-retries", max_retries)
    urls = [u.strip() for part in base_url for u in part.split(",") if u.strip()]
    shape = {k: v for k, v in (("shape_from", shape_from), ("n_params", n_params),
                               ("n_layer", n_layer), ("d_model", d_model)) if v is not None}
    server = {k: v for k, v in (("timeout", timeout), ("max_retries", max_retries))
              if v is not None}
    if backend != "openai":
        given = (["--base-url"] if urls else []) + [f"--{k.replace('_', '-')}"
                                                    for k in (*shape, *server)]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise TTScaleError(f"{', '.join(given)} {verb} only to --backend openai, not "
                               f"{backend!r}")
        return {}
    if not urls:
        raise TTScaleError("--backend openai needs --base-url (the server's URL; repeat it for "
                           "several servers)")
    return {"base_url": urls, **shape, **server}
