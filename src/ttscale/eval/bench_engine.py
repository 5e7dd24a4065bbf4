"""`ttscale bench engine` as a Python API: the torch engine against transformers' generate().

Measured in one run on one model:
  * sampling throughput (completion tokens per second, EOS included, padding after EOS not)
    of the torch engine and of `generate(num_return_sequences=n, do_sample=True)` for each n,
    on the prompts of a workload (`workload_prompts`): by default one problem per built-in task
    and level, all handed over at once as a sweep does; transformers gets them as one
    left-padded batch, the engine as one `generate` call;
  * a tree-search workload (beam search over one-step continuations that end at "\\n"):
    prompt tokens the engine computes with prefix caching and without it (the same requests
    replayed on an engine whose cache is off); `tree_prefill_ratio` = without / with;
  * peak memory: KV + prefix cache bytes of the engine, and the process's peak RSS (or CUDA
    peak allocation).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from ttscale.engine.torch_engine import TorchEngine, parse_device
from ttscale.errors import TTScaleError, unknown
from ttscale.types import GenerationRequest, SamplingParams

DEFAULT_NS = (1, 16, 64)
RANDOM_SIZE = "ttscale-base"


def default_model() -> tuple[str, str]:
    """(path, description): the largest shipped policy model, else a random model of the base size."""
    from ttscale.models.family import SIZES
    from ttscale.models.registry import list_models

    shipped = [m for m in list_models() if m.name in SIZES]
    if shipped:
        return shipped[-1].path, shipped[-1].name
    return random_model(RANDOM_SIZE), f"random {RANDOM_SIZE} (no shipped model yet)"


def random_model(size: str = RANDOM_SIZE, config=None, seed: int = 0) -> str:
    """Save a randomly initialised Llama (a family size, or a given LlamaConfig) to a temp dir."""
    from transformers import GenerationConfig, LlamaForCausalLM

    from ttscale.models.family import SIZES
    from ttscale.models.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config or SIZES[size].config())
    out = Path(tempfile.mkdtemp(prefix="ttscale-bench-"))
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return str(out)


WORKLOADS = ("mixed", "single")


def _prompt() -> str:
    from ttscale.tasks import get_task

    return get_task("arith").problems("test", level=3, n=1)[0].prompt


def workload_prompts(workload: str = "mixed") -> list[str]:
    """The prompts of a throughput run.

    mixed: one test problem per built-in task and level (10 prompts), as a best-of-n sweep
    hands them over; easy and hard problems in one batch, so completion lengths differ.
    single: one arith level-3 prompt.
    """
    from ttscale.tasks import BUILTIN_TASKS, LEVELS, get_task

    if workload not in WORKLOADS:
        raise unknown("workload", workload, WORKLOADS)
    if workload == "single":
        return [_prompt()]
    return [get_task(t).problems("test", level=lv, n=1)[0].prompt
            for t in BUILTIN_TASKS for lv in LEVELS]


def _hf_tokens(seqs: torch.Tensor, prompt_len: int, eos: set[int]) -> int:
    total = 0
    for row in seqs[:, prompt_len:].tolist():
        end = next((i for i, t in enumerate(row) if t in eos), None)
        total += len(row) if end is None else end + 1
    return total


def _hf_generate(hf, engine: TorchEngine, prompts: list[list[int]], n: int, max_tokens: int,
                 seed: int) -> int:
    """Completion tokens (up to and including EOS) of `generate(num_return_sequences=n)` on
    all prompts at once, left-padded as transformers expects for batched generation."""
    width = max(len(p) for p in prompts)
    x = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, p in enumerate(prompts):
        x[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(seed)
    with torch.inference_mode():
        seqs = hf.generate(x.to(engine.device), attention_mask=mask.to(engine.device),
                           do_sample=True, num_return_sequences=n, max_new_tokens=max_tokens,
                           temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0,
                           eos_token_id=sorted(engine.eos))
    return _hf_tokens(seqs, width, set(engine.eos))


def _throughput(engine: TorchEngine, hf, prompts: list[str], ns, max_tokens: int, repeats: int) -> dict:
    ids = [engine.tokenize(p) for p in prompts]
    out = {"engine_tok_s": {}, "hf_tok_s": {}, "speedup": {}, "engine_tokens": {}, "hf_tokens": {}}
    for n in ns:
        best_e = best_h = 0.0
        for r in range(repeats):
            engine.prefix.clear()  # each run computes its prompts: throughput, not cache hits
            params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=r)
            _sync(engine.device)
            t = time.perf_counter()
            res = engine.generate([GenerationRequest(p, params) for p in ids])
            _sync(engine.device)
            dt = time.perf_counter() - t
            errors = [x.error for x in res if x.error]
            if errors:
                raise TTScaleError(f"engine failed: {errors[0]}")
            tokens = sum(x.usage.completion_tokens for x in res)
            best_e = max(best_e, tokens / dt)
            out["engine_tokens"][str(n)] = tokens
            t = time.perf_counter()
            tokens = _hf_generate(hf, engine, ids, n, max_tokens, seed=r)
            _sync(engine.device)
            best_h = max(best_h, tokens / (time.perf_counter() - t))
            out["hf_tokens"][str(n)] = tokens
        out["engine_tok_s"][str(n)] = round(best_e, 1)
        out["hf_tok_s"][str(n)] = round(best_h, 1)
        out["speedup"][str(n)] = round(best_e / best_h, 2)
    return out


def tree_workload(engine: TorchEngine, prompt: str, beams: int = 4, expand: int = 4,
                  depth: int = 6, step_tokens: int = 24) -> list[list[GenerationRequest]]:
    """Run a beam search of one-step continuations; returns the requests of each round.

    Each round asks `expand` continuations (stop at "\\n") of each of `beams` prefixes and keeps
    the `beams` candidates of highest mean logprob, each extended by its step and "\\n".
    """
    rounds, prefixes = [], [prompt]
    for d in range(depth):
        reqs = [GenerationRequest(p, SamplingParams(n=expand if d or len(prefixes) > 1 else beams * expand,
                                                    temperature=1.0, max_tokens=step_tokens,
                                                    stop=["\n"], seed=1000 * d + i, logprobs=True))
                for i, p in enumerate(prefixes)]
        room = engine.context_length - step_tokens - 2
        reqs = [r for r in reqs if len(engine.tokenize(r.prompt)) < room]
        if not reqs:
            break
        rounds.append(reqs)
        cands = []
        for req, res in zip(reqs, engine.generate(reqs)):
            for c in res.completions:
                score = sum(c.logprobs) / max(1, len(c.logprobs))
                cands.append((score, req.prompt + c.text + "\n"))
        cands.sort(key=lambda c: -c[0])
        prefixes = [p for _, p in cands[:beams]]
    return rounds


def _prompt_computed(engine: TorchEngine, rounds) -> tuple[int, int, float]:
    """(prompt tokens, of which computed, seconds) of replaying the rounds on `engine`."""
    total = computed = 0
    t = time.perf_counter()
    for reqs in rounds:
        for res in engine.generate(reqs):
            total += res.usage.prompt_tokens
            computed += res.usage.prompt_tokens - res.usage.cached_tokens
    return total, computed, time.perf_counter() - t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    import transformers

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        machine += f", GPU {torch.cuda.get_device_name(device)}"
    return {"machine": machine, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date": _dt.datetime.now().isoformat(timespec="seconds")}


def bench_engine(model: str | None = None, ns=DEFAULT_NS, max_tokens: int = 128,
                 device: str = "cpu", dtype: str = "float32", repeats: int = 1,
                 compile: bool = False, tree_depth: int = 6, workload: str = "mixed") -> dict:
    """Run the benchmark and return its figures (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    from ttscale.engine.loader import parse_dtype
    from ttscale.models.registry import resolve_model

    dev = parse_device(device)
    if model is None:
        path, label = default_model()
    else:
        path, label = resolve_model(model), model
    ns = tuple(int(n) for n in ns)
    prompts = workload_prompts(workload)
    engine = TorchEngine(path, device=device, dtype=dtype, compile=compile)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=parse_dtype(dtype)).to(dev).eval()
    prompt = _prompt()
    warm = GenerationRequest(prompt, SamplingParams(n=2, max_tokens=8, seed=0))
    engine.generate([warm])
    x = torch.tensor([engine.tokenize(prompt)], device=dev)
    with torch.inference_mode():
        hf.generate(x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=8,
                    pad_token_id=0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    result = {"model": label, "params": engine.shape.n_params, "device": str(dev), "dtype": dtype,
              "workload": workload, "prompts": len(prompts),
              "prompt_tokens": sum(len(engine.tokenize(p)) for p in prompts),
              "max_tokens": max_tokens, "ns": list(ns)}
    result.update(_throughput(engine, hf, prompts, ns, max_tokens, repeats))

    engine.prefix.clear()
    rounds = tree_workload(engine, prompt, depth=tree_depth)
    cached_engine = TorchEngine(path, device=device, dtype=dtype)
    total, with_cache, t_with = _prompt_computed(cached_engine, rounds)
    plain = TorchEngine(path, device=device, dtype=dtype, prefix_cache_bytes=0)
    _, without, t_without = _prompt_computed(plain, rounds)
    result.update({
        "tree_requests": sum(len(r) for r in rounds), "tree_prompt_tokens": total,
        "tree_computed_with_cache": with_cache, "tree_computed_without_cache": without,
        "tree_prefill_ratio": round(without / max(1, with_cache), 2),
        "tree_wall_s_with_cache": round(t_with, 3), "tree_wall_s_without_cache": round(t_without, 3),
        "peak_kv_bytes": max(engine.peak_kv_bytes, cached_engine.peak_kv_bytes),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    })
    if dev.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(dev)
    result.update(environment(dev))
    result["command"] = "ttscale " + " ".join(sys.argv[1:]) if "bench" in sys.argv else "bench_engine()"
    return result


def table(r: dict) -> str:
    lines = [f"model {r['model']} ({r['params']:,} params), {r['device']} {r['dtype']}, "
             f"workload {r['workload']}: {r['prompts']} prompts ({r['prompt_tokens']} tokens) x n "
             f"samples, max_tokens {r['max_tokens']}",
             f"{'n':>4} {'engine tok/s':>13} {'hf tok/s':>10} {'speedup':>8}"]
    for n in r["ns"]:
        k = str(n)
        lines.append(f"{n:>4} {r['engine_tok_s'][k]:>13,.1f} {r['hf_tok_s'][k]:>10,.1f} {r['speedup'][k]:>7.2f}x")
    lines.append(f"tree search: {r['tree_requests']} requests, prompt tokens computed "
                 f"{r['tree_computed_without_cache']} without / {r['tree_computed_with_cache']} with "
                 f"prefix caching = {r['tree_prefill_ratio']}x "
                 f"({r['tree_wall_s_without_cache']}s / {r['tree_wall_s_with_cache']}s)")
    lines.append(f"peak memory: KV + prefix cache {r['peak_kv_bytes'] / 2**20:.1f} MiB, "
                 f"process RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB"
                 + (f", CUDA {r['peak_cuda_bytes'] / 2**20:.0f} MiB" if "peak_cuda_bytes" in r else ""))
    return "\n".join(lines)


def append_to_doc(r: dict, note: str = "", path: str | Path | None = None) -> Path:
    """Append the run to docs/benchmarks.md (created with a title if missing)."""
    path = Path(path) if path else Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "" if path.exists() else "# Benchmarks\n\nEach run is appended by the command that made it.\n"
    block = (f"\n## Engine: `{r['command']}` ({r['date']})\n\n"
             f"Machine: {r['machine']}. Python {r['python']}, torch {r['torch']}, "
             f"transformers {r['transformers']}.{(' ' + note) if note else ''}\n\n"
             "```\n" + table(r) + "\n```\n\n<details><summary>JSON</summary>\n\n```json\n"
             + json.dumps(r, indent=1) + "\n```\n</details>\n")
    with path.open("a") as f:
        f.write(head + block)
    return path
