"""Issue 15: peak decoding KV of n samples of one long prompt against the samples' length.

For each `--max-tokens`, n samples at temperature 1 of one ~512-token prompt (`bench.engine.
long_prompt`) through an unbounded engine; prints one JSON line per length with the peak
decoding KV bytes and the completion tokens. Run it once with this tree and once with the
engine before paging on PYTHONPATH (commit c8d49a6: dense rows, n x (prompt + max_tokens)
positions) to get the ratio at each length (docs/benchmarks.md, "KV sharing against sample
length"). `token_ids_sha256` tells whether two runs gave the same tokens; `at_limit`, how many
samples ran to max_tokens.

    OMP_NUM_THREADS=1 python benchmarks/kv_sharing.py --model G --max-tokens 16,32,64,128
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

from ttscale.bench.engine import long_prompt
from ttscale.engine.torch_engine import TorchEngine
from ttscale.models.registry import resolve_model
from ttscale.types import GenerationRequest, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model with room for a 512-token prompt")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", default="16,32,64,128")
    args = ap.parse_args()
    path = resolve_model(args.model)
    prompt = None
    for m in (int(x) for x in args.max_tokens.split(",")):
        engine = TorchEngine(path, prefix_cache_bytes=0)  # fresh: its own peak
        prompt = prompt or long_prompt(engine.tokenize, args.prompt_tokens)
        t = time.perf_counter()
        out = engine.generate([GenerationRequest(prompt, SamplingParams(
            n=args.n, temperature=1.0, max_tokens=m, seed=0))])[0]
        if out.error:
            raise SystemExit(out.error)
        print(json.dumps({"max_tokens": m, "n": args.n, "prompt_tokens": out.usage.prompt_tokens,
                          "completion_tokens": out.usage.completion_tokens,
                          "kv_bytes_peak": engine.peak_decode_kv_bytes,
                          "at_limit": sum(c.finish_reason == "length" for c in out.completions),
                          "token_ids_sha256": hashlib.sha256(json.dumps(
                              [c.token_ids for c in out.completions]).encode()).hexdigest()[:16],
                          "wall_s": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
