"""Several endpoints at once: throughput of the same `ttscale solve` workload over one server and
over several (repeated --base-url, least-loaded first), and whether the answers agree.

By default it starts its own servers: `ttscale serve --model MODEL` processes with one torch
thread each (OMP_NUM_THREADS=1) on ports 8101, 8102, ...; or pass running servers (e.g. the
llama.cpp ones of scripts/llamacpp_server.sh) with --base-url, repeated, and --model, the name
they serve, plus --shape-from for FLOPs.

    python benchmarks/endpoints.py [--model ttscale-small] [--servers 2] [--num-problems 12]
        [--endpoint-concurrency 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

from ttscale.eval.solve import run_solve


def wait_ready(url: str, timeout: float = 300.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            # ttscale serve answers /health; llama.cpp's server has only the OpenAI routes
            if any(httpx.get(url + path, timeout=5).status_code == 200 for path in ("/health", "/v1/models")):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not become ready in {timeout:.0f} s")


def timed_solve(urls: list[str], args: argparse.Namespace, cap: int = 0,
                num_problems: int | None = None) -> tuple[float, dict]:
    """Wall seconds and the solve output, with this client's own CPU seconds in out["client_cpu_s"]
    (on a machine shared with the servers, the client's work competes with theirs)."""
    t0, c0 = time.perf_counter(), time.process_time()
    level = None if args.task.endswith(".jsonl") else args.level  # JSONL tasks have no levels
    out = run_solve(args.model, task=args.task, level=level,
                    num_problems=num_problems or args.num_problems,
                    strategy="majority", params={"n": args.n, "max_tokens": args.max_tokens},
                    backend="openai", generator_options={
                        "base_url": urls, "shape_from": args.shape_from or args.model,
                        **({"endpoint_concurrency": cap} if cap else {})},
                    shots=args.shots)
    out["client_cpu_s"] = time.process_time() - c0
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ttscale-small")
    ap.add_argument("--base-url", action="append", default=[])
    ap.add_argument("--shape-from", default=None)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--task", default="arith")
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--num-problems", type=int, default=12)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--endpoint-concurrency", default="0",
                    help="requests in flight per server in the several-server run, 0 for no cap; "
                         "several separated by commas run one after the other (e.g. 2,0)")
    ap.add_argument("--several-first", action="store_true",
                    help="time the several-server runs before the one-server run")
    args = ap.parse_args()
    procs = []
    urls = list(args.base_url)
    if not urls:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for k in range(args.servers):
            port = 8101 + k
            procs.append(subprocess.Popen([sys.executable, "-c", "from ttscale.cli import main; "
                                           "main()", "serve", "--model", args.model, "--port",
                                           str(port)], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
    try:
        for u in urls:
            wait_ready(u)
        timed_solve(urls, args, num_problems=2)  # warm-up of every server: caches, lazy starts
        caps = [int(c) for c in args.endpoint_concurrency.split(",")]
        if args.several_first:  # the other order, to rule out an order effect
            runs = [(c, *timed_solve(urls, args, c)) for c in caps]
            one_s, one = timed_solve(urls[:1], args)
        else:
            one_s, one = timed_solve(urls[:1], args)
            runs = [(c, *timed_solve(urls, args, c)) for c in caps]
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    for cap, all_s, many in runs:
        report(args, len(urls), cap, one_s, one, all_s, many)


def report(args: argparse.Namespace, servers: int, cap: int, one_s: float, one: dict, all_s: float,
           many: dict) -> None:
    same = [r["answer"] for r in one["problems"]] == [r["answer"] for r in many["problems"]]
    # Sampled completions differ between the two runs wherever the servers' seeded sampling does
    # not reproduce (llama.cpp), and so does the work: throughput is completion tokens per second.
    one_tok, many_tok = (sum(r["completion_tokens"] for r in o["problems"]) for o in (one, many))
    print(f"{args.num_problems} problems, majority n={args.n}, {args.model}: one server "
          f"{one_s:.1f} s ({one_tok} tokens, {one_tok / one_s:.1f} tok/s), {servers} servers "
          f"(per-server cap {cap or 'none'}) "
          f"{all_s:.1f} s ({many_tok} tokens, {many_tok / all_s:.1f} tok/s) -> wall {one_s / all_s:.2f}x, "
          f"throughput {(many_tok / all_s) / (one_tok / one_s):.2f}x; "
          f"accuracy {one['accuracy']:.3f} vs {many['accuracy']:.3f}; same answers: {same}; "
          f"client CPU {one['client_cpu_s']:.1f} s vs {many['client_cpu_s']:.1f} s")


if __name__ == "__main__":
    main()
