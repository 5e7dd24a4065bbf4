"""`ttscale bench serve`: K concurrent clients for T seconds against `ttscale serve` on loopback.

Each client sends, one after another, a mix of plain completions, chats (some streamed) and
strategy requests (majority vote, best-of-N with the oracle, beam search) on problems of the
built-in tasks, until T seconds have passed; requests in flight then finish. Reported:
throughput, p50/p99 latency, responses by status code, dropped requests (no response, or a
stream without `[DONE]`), and what the server spent (tokens, FLOPs) from its /metrics.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import random
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from ttscale.errors import TTScaleError

KINDS = ("completion", "chat", "chat_stream", "majority", "best_of_n", "beam_search")


def _requests(model: str, max_tokens: int, seed: int) -> list[tuple[str, str, dict, bool]]:
    """(kind, path, body, stream) for a pool of problems, in a fixed shuffled order."""
    from ttscale.tasks import get_task

    rng = random.Random(seed)
    problems = get_task("countdown").problems("test", level=2, n=24, seed=seed) + \
        get_task("arith").problems("test", level=2, n=24, seed=seed)
    out = []
    for i, p in enumerate(problems):
        kind = KINDS[i % len(KINDS)]
        chat = {"model": model, "messages": [{"role": "user", "content": p.question}],
                "max_tokens": max_tokens}
        if kind == "completion":
            out.append((kind, "/v1/completions", {"model": model, "prompt": p.prompt,
                                                  "max_tokens": max_tokens}, False))
        elif kind == "chat":
            out.append((kind, "/v1/chat/completions", chat, False))
        elif kind == "chat_stream":
            out.append((kind, "/v1/chat/completions", {**chat, "stream": True}, True))
        elif kind == "majority":
            out.append((kind, "/v1/chat/completions", {**chat, "model": f"majority-4/{model}"},
                        False))
        elif kind == "best_of_n":
            out.append((kind, "/v1/chat/completions", {**chat, "ttscale": {
                "strategy": "best_of_n", "n": 4, "scorer": "oracle"}}, False))
        else:
            out.append((kind, "/v1/chat/completions", {**chat, "ttscale": {
                "strategy": "beam_search", "n": 4, "scorer": "oracle",
                "params": {"width": 2, "max_depth": 4}}}, False))
    rng.shuffle(out)
    return out


async def _client(k: int, url: str, pool: list, stop_at: float, timeout: float,
                  log: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        i = k
        while time.perf_counter() < stop_at:
            kind, path, body, stream = pool[i % len(pool)]
            i += 7
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"kind": kind}
            try:
                if stream:
                    async with http.stream("POST", path, json=body) as r:
                        lines = [x async for x in r.aiter_lines() if x]
                    rec["status"] = r.status_code
                    rec["dropped"] = r.status_code == 200 and (not lines or lines[-1] != "data: [DONE]")
                else:
                    r = await http.post(path, json=body)
                    rec["status"] = r.status_code
                    rec["dropped"] = False
                    if r.status_code == 429:
                        await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 5))
            except httpx.HTTPError as e:
                rec["status"] = None
                rec["dropped"] = True
                rec["error"] = type(e).__name__
            rec["latency_s"] = time.perf_counter() - t0
            log.append(rec)


STAGES = ("sent", "role", "token")


def disconnect(url: str, path: str, body: dict[str, Any], stage: str,
               timeout: float = 60.0) -> None:
    """One streaming client that goes away at `stage`: "sent" (the request written, nothing
    read), "role" (after the first event: the role chunk of a chat, the first text of a
    completion), "token" (after the first event carrying generated text)."""
    if stage not in STAGES:
        raise TTScaleError(f"stage {stage!r} is unknown; accepted: {', '.join(STAGES)}")
    if stage == "sent":
        host, _, port = url.removeprefix("http://").partition(":")
        data = json.dumps({**body, "stream": True}).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        with socket.create_connection((host, int(port or 80)), timeout=timeout) as sock:
            sock.sendall(head + data)
        return
    with httpx.stream("POST", url + path, json={**body, "stream": True}, timeout=timeout) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            if stage == "role" or _has_text(json.loads(line[6:])):
                return  # leaving the block closes the connection mid-stream


def _has_text(event: dict[str, Any]) -> bool:
    for c in event.get("choices") or []:
        if c.get("text") or (c.get("delta") or {}).get("content"):
            return True
    return False


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def bench_serve(clients: int = 64, seconds: float = 30.0, model: str | None = None,
                max_concurrency: int = 4, max_queue: int = 64, max_tokens: int = 48,
                seed: int = 0) -> dict[str, Any]:
    """Run the load test against an in-process server on 127.0.0.1; returns the figures."""
    if clients < 1 or clients > 1024:
        raise TTScaleError(f"clients={clients} is out of range; accepted: 1..1024")
    if not 0 < seconds <= 600:
        raise TTScaleError(f"seconds={seconds} is out of range; accepted: 0 < seconds <= 600")
    import torch

    from ttscale.serve import Limits, create_app
    from ttscale.serve.build import ServeOptions, build_config
    from ttscale.serve.runner import ServerThread

    limits = Limits(max_concurrency=max_concurrency, max_queue=max_queue,
                    max_tokens=max(max_tokens, 64))
    cfg = build_config(ServeOptions(model=model, limits=limits))
    pool = _requests(cfg.model_name, max_tokens, seed)
    log: list[dict[str, Any]] = []
    with ServerThread(create_app(cfg)) as server:
        t0 = time.perf_counter()

        async def run() -> None:
            await asyncio.gather(*(_client(k, server.url, pool, t0 + seconds,
                                           limits.request_timeout_s + 60, log)
                                   for k in range(clients)))

        asyncio.run(run())
        wall = time.perf_counter() - t0
        m = _metrics(server.url)
    ok = [r for r in log if r["status"] == 200]
    lat = [r["latency_s"] for r in ok]
    by_status = Counter(str(r["status"]) for r in log)
    by_kind = {k: {"requests": sum(r["kind"] == k for r in log),
                   "p50_s": _percentile([r["latency_s"] for r in ok if r["kind"] == k], 0.5)}
               for k in KINDS}
    return {
        "command": f"ttscale bench serve --clients {clients} --seconds {seconds:g}",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
                   f"{torch.get_num_threads()}",
        "python": platform.python_version(), "torch": torch.__version__,
        "model": cfg.model_name, "clients": clients, "seconds": seconds,
        "max_concurrency": max_concurrency, "max_queue": max_queue, "max_tokens": max_tokens,
        "wall_s": round(wall, 2), "requests": len(log),
        "throughput_rps": round(len(ok) / wall, 3),
        "p50_s": _percentile(lat, 0.5), "p99_s": _percentile(lat, 0.99),
        "by_status": dict(sorted(by_status.items())),
        "dropped": sum(bool(r["dropped"]) for r in log),
        "server_5xx": sum(1 for r in log if r["status"] and r["status"] >= 500),
        "by_kind": by_kind,
        "tokens_per_s": round((m.get('ttscale_tokens_total{kind="prompt"}', 0)
                               + m.get('ttscale_tokens_total{kind="completion"}', 0)) / wall, 1),
        "flops": m.get("ttscale_flops_total", 0.0),
    }


def table(r: dict[str, Any]) -> str:
    """The figures as a small text table."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"model {r['model']}: {r['clients']} clients for {r['seconds']:g}s "
             f"(max_concurrency {r['max_concurrency']}, max_queue {r['max_queue']})",
             f"requests {r['requests']}  throughput {r['throughput_rps']:.2f} req/s  "
             f"p50 {fmt(r['p50_s'])}s  p99 {fmt(r['p99_s'])}s  tokens/s {r['tokens_per_s']}",
             f"by status {r['by_status']}  dropped {r['dropped']}  5xx {r['server_5xx']}",
             f"{'kind':<12} {'requests':>8} {'p50 s':>8}"]
    for k, v in r["by_kind"].items():
        lines.append(f"{k:<12} {v['requests']:>8} {fmt(v['p50_s']):>8}")
    return "\n".join(lines)


def append_to_doc(r: dict[str, Any], note: str = "", path: str | Path | None = None) -> Path:
    """Append the run to docs/benchmarks.md as a `## serve` entry."""
    path = Path(path) if path else Path(__file__).resolve().parents[3] / "docs" / "benchmarks.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "" if path.exists() else "# Benchmarks\n\nEach run is appended by the command that made it.\n"
    block = (f"\n## serve: `{r['command']}` ({r['date']})\n\n"
             f"Machine: {r['machine']}. Python {r['python']}, torch {r['torch']}. Loopback "
             "only; mixed plain, streamed and strategy requests (majority-4, best-of-4 with the "
             "oracle, beam search n=4 width 2)."
             f"{(' ' + note) if note else ''}\n\n```\n" + table(r) + "\n```\n\n<details><summary>"
             "JSON</summary>\n\n```json\n" + json.dumps(r, indent=1) + "\n```\n</details>\n")
    with path.open("a") as f:
        f.write(head + block)
    return path
