"""`ttscale bench serve`: K concurrent clients for T seconds against `ttscale serve` on loopback.

Each client sends, one after another, greedy requests (half of them streamed), majority-8 and
beam search on problems of the built-in tasks, plus 5% malformed requests, until T seconds have
passed; requests in flight then finish. Reported per request kind: p50/p99 latency and status
codes; overall: throughput, 5xx, malformed requests answered by a 4xx with an error object,
dropped requests (no response, or a stream without `[DONE]`), what the server spent, and
whether any queue place or worker slot was left taken. With `disconnects`, streaming clients
then go away at each stage (request sent, role chunk, first token, while queued).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from ttscale.errors import TTScaleError

KINDS = ("greedy", "greedy_stream", "majority-8", "beam_search", "malformed")
MALFORMED_SHARE = 0.05


def _malformed(model: str) -> list[tuple[str, Any]]:
    """Requests a server must refuse with a 4xx and an error object (path, JSON body or raw
    bytes): wrong types, out-of-range values, unknown names, broken JSON."""
    prompt = {"model": model, "prompt": "Q: 3+4\n", "max_tokens": 8}
    return [
        ("/v1/chat/completions", {"model": model, "messages": "not a list"}),
        ("/v1/completions", {**prompt, "ttscale": {"strategy": "majority",
                                                   "params": {"seed": "x" * 2000}}}),
        ("/v1/completions", {**prompt, "max_tokens": -5}),
        ("/v1/completions", b'{"model": "' + model.encode() + b'", "prompt": '),
        ("/v1/completions", {**prompt, "ttscale": {"strategy": "beam_search",
                                                   "params": {"width": 10**9}}}),
        ("/v1/completions", {**prompt, "frobnicate": 1}),
        ("/v1/completions", {**prompt, "ttscale": {"effort": "extreme"}}),
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": 3}]}),
    ]


def _requests(model: str, max_tokens: int, seed: int) -> list[tuple[str, str, Any, bool]]:
    """(kind, path, body, stream) for a pool of problems in a fixed shuffled order: greedy
    (half of it streamed), majority-8 and beam search in equal parts, 5% malformed."""
    from ttscale.tasks import get_task

    rng = random.Random(seed)
    problems = get_task("countdown").problems("test", level=2, n=60, seed=seed) + \
        get_task("arith").problems("test", level=2, n=60, seed=seed)
    bad = _malformed(model)
    out: list[tuple[str, str, Any, bool]] = []
    for i, p in enumerate(problems):
        if rng.random() < MALFORMED_SHARE:
            path, body = bad[len(out) % len(bad)]
            out.append(("malformed", path, body, False))
            continue
        chat = {"model": model, "messages": [{"role": "user", "content": p.question}],
                "max_tokens": max_tokens}
        kind = ("greedy", "greedy_stream", "majority-8", "majority-8", "beam_search",
                "beam_search")[i % 6]
        if kind == "greedy":
            out.append((kind, "/v1/chat/completions", {**chat, "temperature": 0}, False))
        elif kind == "greedy_stream":
            out.append((kind, "/v1/completions", {"model": model, "prompt": p.prompt,
                                                  "max_tokens": max_tokens, "temperature": 0,
                                                  "stream": True}, True))
        elif kind == "majority-8":
            out.append((kind, "/v1/chat/completions", {**chat, "model": f"majority-8/{model}"},
                        False))
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
                        lines = []
                        async for x in r.aiter_lines():
                            if x.startswith("data: ") and not lines:
                                rec["ttft_s"] = time.perf_counter() - t0
                            if x:
                                lines.append(x)
                    rec["status"] = r.status_code
                    rec["dropped"] = r.status_code == 200 and (not lines or lines[-1] != "data: [DONE]")
                else:
                    if isinstance(body, bytes):
                        r = await http.post(path, content=body,
                                            headers={"content-type": "application/json"})
                    else:
                        r = await http.post(path, json=body)
                    rec["status"] = r.status_code
                    rec["dropped"] = False
                    if kind == "malformed":
                        rec["error_object"] = _is_error_object(r)
                    if r.status_code == 429:
                        await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 5))
            except httpx.HTTPError as e:
                rec["status"] = None
                rec["dropped"] = True
                rec["error"] = type(e).__name__
            rec["latency_s"] = time.perf_counter() - t0
            log.append(rec)


def _is_error_object(r: httpx.Response) -> bool:
    try:
        err = r.json().get("error")
    except ValueError:
        return False
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err


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


def _idle(url: str, timeout: float = 120.0) -> tuple[int, int]:
    """Wait until nothing is queued or running; (queued, running) at the end."""
    t0 = time.perf_counter()
    while True:
        m = _metrics(url)
        q, r = int(m.get("ttscale_queue_depth", 0)), int(m.get("ttscale_requests_running", 0))
        if (q == 0 and r == 0) or time.perf_counter() - t0 > timeout:
            return q, r
        time.sleep(0.2)


def _disconnects(url: str, model: str, per_stage: int, slots: int) -> dict[str, Any]:
    """`per_stage` streaming clients gone at each stage (request sent, role chunk, first
    token, and while queued behind `slots` busy requests); what each stage left behind."""
    from concurrent.futures import ThreadPoolExecutor

    chat = {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": "3+4*2"}]}
    out: dict[str, Any] = {}
    for stage in ("sent", "role", "token", "queued"):
        stop = threading.Event()
        holders = []
        if stage == "queued":  # keep every slot busy so the disconnecting streams wait
            def hold() -> None:
                while not stop.is_set():
                    with contextlib.suppress(httpx.HTTPError):
                        httpx.post(url + "/v1/chat/completions", timeout=300,
                                   json={**chat, "model": f"majority-8/{model}"})
            holders = [threading.Thread(target=hold, daemon=True) for _ in range(slots)]
            for h in holders:
                h.start()
            time.sleep(1.0)
        t0 = time.perf_counter()
        how = "role" if stage == "queued" else stage
        with ThreadPoolExecutor(8) as pool:
            errors = sum(1 for ok in pool.map(lambda _: _try_disconnect(url, chat, how),
                                              range(per_stage)) if not ok)
        stop.set()
        for h in holders:
            h.join(300)
        queued, running = _idle(url)
        out[stage] = {"disconnects": per_stage, "client_errors": errors,
                      "seconds": round(time.perf_counter() - t0, 2),
                      "left_queued": queued, "left_running": running}
    return out


def _try_disconnect(url: str, body: dict[str, Any], stage: str) -> bool:
    try:
        disconnect(url, "/v1/chat/completions", body, stage)
        return True
    except (httpx.HTTPError, OSError):
        return False


def bench_serve(clients: int = 64, seconds: float = 60.0, model: str | None = None,
                max_concurrency: int = 16, max_queue: int = 64, max_tokens: int = 48,
                seed: int = 0, disconnects: int = 0) -> dict[str, Any]:
    """Run the load test against an in-process server on 127.0.0.1, then (`disconnects` > 0)
    that many disconnecting clients at each stage; returns the figures."""
    if clients < 1 or clients > 1024:
        raise TTScaleError(f"clients={clients} is out of range; accepted: 1..1024")
    if not 0 < seconds <= 600:
        raise TTScaleError(f"seconds={seconds} is out of range; accepted: 0 < seconds <= 600")
    if not 0 <= disconnects <= 10_000:
        raise TTScaleError(f"disconnects={disconnects} is out of range; accepted: 0..10000")
    import torch

    from ttscale.serve import Limits, create_app
    from ttscale.serve.build import ServeOptions, build_config
    from ttscale.serve.runner import ServerThread

    limits = Limits(max_concurrency=max_concurrency, max_queue=max_queue,
                    max_tokens=max(max_tokens, 64))
    cfg = build_config(ServeOptions(model=model, limits=limits))
    pool = _requests(cfg.model_name, max_tokens, seed)
    log: list[dict[str, Any]] = []
    faults = None
    with ServerThread(create_app(cfg)) as server:
        t0 = time.perf_counter()

        async def run() -> None:
            await asyncio.gather(*(_client(k, server.url, pool, t0 + seconds,
                                           limits.request_timeout_s + 60, log)
                                   for k in range(clients)))

        asyncio.run(run())
        wall = time.perf_counter() - t0
        m = _metrics(server.url)
        queued, running = _idle(server.url)
        if disconnects:
            faults = _disconnects(server.url, cfg.model_name, disconnects, max_concurrency)
    ok = [r for r in log if r["status"] == 200]
    by_status = Counter(str(r["status"]) for r in log)
    by_kind = {}
    for k in KINDS:
        rows = [r for r in log if r["kind"] == k]
        lat = [r["latency_s"] for r in rows if r["status"] == 200]
        by_kind[k] = {"requests": len(rows),
                      "by_status": dict(sorted(Counter(str(r["status"]) for r in rows).items())),
                      "p50_s": _percentile(lat, 0.5), "p99_s": _percentile(lat, 0.99)}
        if k == "greedy_stream":
            by_kind[k]["ttft_p50_s"] = _percentile([r["ttft_s"] for r in rows if "ttft_s" in r], 0.5)
    bad = [r for r in log if r["kind"] == "malformed"]
    return {
        "command": f"ttscale bench serve --clients {clients} --seconds {seconds:g}"
                   + (f" --model {model}" if model else "")
                   + (f" --disconnects {disconnects}" if disconnects else ""),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
                   f"{torch.get_num_threads()}",
        "python": platform.python_version(), "torch": torch.__version__,
        "model": cfg.model_name, "clients": clients, "seconds": seconds,
        "max_concurrency": max_concurrency, "max_queue": max_queue, "max_tokens": max_tokens,
        "wall_s": round(wall, 2), "requests": len(log),
        "throughput_rps": round(len(ok) / wall, 3),
        "by_status": dict(sorted(by_status.items())),
        "dropped": sum(bool(r["dropped"]) for r in log),
        "server_5xx": sum(1 for r in log if r["status"] and r["status"] >= 500),
        "malformed_4xx_with_error": sum(1 for r in bad if r["status"] and 400 <= r["status"] < 500
                                        and r.get("error_object")),
        "malformed": len(bad),
        "left_queued": queued, "left_running": running,
        "by_kind": by_kind,
        "completion_tokens_per_s": round(m.get('ttscale_tokens_total{kind="completion"}', 0)
                                         / wall, 1),
        "flops": m.get("ttscale_flops_total", 0.0),
        "disconnects": faults,
    }


async def _streamer(url: str, model: str, prompts: list[str], k: int, max_tokens: int,
                    stop_at: float, log: list[dict[str, Any]]) -> None:
    """One client sending streamed greedy completions one after another until `stop_at`."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        i = k
        while time.perf_counter() < stop_at:
            body = {"model": model, "prompt": prompts[i % len(prompts)], "max_tokens": max_tokens,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            i += 7
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"ttft_s": None, "tokens": 0}
            async with http.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if rec["ttft_s"] is None and _has_text(event):
                        rec["ttft_s"] = time.perf_counter() - t0
                    if event.get("usage"):
                        rec["tokens"] = event["usage"]["completion_tokens"]
            rec["status"] = r.status_code
            rec["latency_s"] = time.perf_counter() - t0
            log.append(rec)


def _stream_phase(url: str, model: str, prompts: list[str], clients: int, seconds: float,
                  max_tokens: int) -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    async def run() -> None:
        await asyncio.gather(*(_streamer(url, model, prompts, k, max_tokens, t0 + seconds, log)
                               for k in range(clients)))

    asyncio.run(run())
    wall = time.perf_counter() - t0
    ok = [r for r in log if r["status"] == 200]
    return {"clients": clients, "requests": len(log), "ok": len(ok), "wall_s": round(wall, 2),
            "ttft_p50_s": _percentile([r["ttft_s"] for r in ok if r["ttft_s"] is not None], 0.5),
            "latency_p50_s": _percentile([r["latency_s"] for r in ok], 0.5),
            "completion_tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1)}


def bench_stream(clients: int = 16, seconds: float = 30.0, model: str | None = None,
                 max_tokens: int = 32) -> dict[str, Any]:
    """Short streamed greedy requests: one client alone for `seconds`, then `clients` at once
    for `seconds`; median time to first token and completion tokens/s of each, and ratios."""
    if not 1 <= clients <= 1024:
        raise TTScaleError(f"clients={clients} is out of range; accepted: 1..1024")
    import torch

    from ttscale.serve import Limits, create_app
    from ttscale.serve.build import ServeOptions, build_config
    from ttscale.serve.runner import ServerThread
    from ttscale.tasks import get_task

    cfg = build_config(ServeOptions(model=model, limits=Limits(
        max_concurrency=max(clients, 16), max_tokens=max(64, max_tokens))))
    prompts = [p.prompt for name in ("arith", "countdown")
               for p in get_task(name).problems("test", level=2, n=32, seed=0)]
    with ServerThread(create_app(cfg)) as server:
        name = cfg.model_name
        _stream_phase(server.url, name, prompts, 1, min(5.0, seconds), max_tokens)  # warm-up
        lone = _stream_phase(server.url, name, prompts, 1, seconds, max_tokens)
        many = _stream_phase(server.url, name, prompts, clients, seconds, max_tokens)
    ratio = lambda a, b: round(a / b, 2) if a and b else None  # noqa: E731
    return {
        "command": f"ttscale bench serve --workload stream --clients {clients} --seconds "
                   f"{seconds:g}" + (f" --model {model}" if model else ""),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
                   f"{torch.get_num_threads()}",
        "python": platform.python_version(), "torch": torch.__version__,
        "model": cfg.model_name, "max_tokens": max_tokens, "lone": lone, "many": many,
        "ttft_ratio": ratio(many["ttft_p50_s"], lone["ttft_p50_s"]),
        "throughput_ratio": ratio(many["completion_tokens_per_s"],
                                  lone["completion_tokens_per_s"]),
    }


def stream_table(r: dict[str, Any]) -> str:
    rows = [f"model {r['model']}: streamed greedy completions of up to {r['max_tokens']} tokens",
            f"{'clients':>8} {'requests':>9} {'TTFT p50 s':>11} {'latency p50 s':>14} "
            f"{'completion tok/s':>17}"]
    for v in (r["lone"], r["many"]):
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        rows.append(f"{v['clients']:>8} {v['requests']:>9} {fmt(v['ttft_p50_s']):>11} "
                    f"{fmt(v['latency_p50_s']):>14} {v['completion_tokens_per_s']:>17}")
    rows.append(f"TTFT {r['ttft_ratio']}x a lone client's; throughput {r['throughput_ratio']}x")
    return "\n".join(rows)


def table(r: dict[str, Any]) -> str:
    """The figures as a small text table."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"model {r['model']}: {r['clients']} clients for {r['seconds']:g}s "
             f"(max_concurrency {r['max_concurrency']}, max_queue {r['max_queue']})",
             f"requests {r['requests']}  throughput {r['throughput_rps']:.2f} req/s  "
             f"completion tokens/s {r['completion_tokens_per_s']}",
             f"by status {r['by_status']}  dropped {r['dropped']}  5xx {r['server_5xx']}  "
             f"malformed {r['malformed']} (4xx with an error object: "
             f"{r['malformed_4xx_with_error']})  left queued/running {r['left_queued']}/"
             f"{r['left_running']}",
             f"{'kind':<14} {'requests':>8} {'p50 s':>8} {'p99 s':>8}  statuses"]
    for k, v in r["by_kind"].items():
        lines.append(f"{k:<14} {v['requests']:>8} {fmt(v['p50_s']):>8} {fmt(v['p99_s']):>8}  "
                     f"{v['by_status']}")
    if r.get("disconnects"):
        lines.append(f"{'disconnect at':<14} {'clients':>8} {'seconds':>8}  left queued/running")
        for stage, v in r["disconnects"].items():
            lines.append(f"{stage:<14} {v['disconnects']:>8} {v['seconds']:>8}  "
                         f"{v['left_queued']}/{v['left_running']}")
    return "\n".join(lines)


def append_to_doc(r: dict[str, Any], note: str = "", path: str | Path = "benchmarks.md") -> Path:
    """Append the run to a markdown file as a `## serve` entry (created with a title if
    missing); relative paths are relative to the working directory, never the package."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "" if path.exists() else "# Benchmarks\n\nEach run is appended by the command that made it.\n"
    what = ("streamed greedy completions, one client alone, then the given number at once "
            "(continuous batching: each request joins the running batch at the next step)."
            if "lone" in r else
            "greedy (half streamed), majority-8 and beam search (n=4, width 2, oracle) in equal "
            "parts plus 5% malformed requests; then, with --disconnects N, N streaming clients "
            "gone at each stage.")
    text = stream_table(r) if "lone" in r else table(r)
    block = (f"\n## serve: `{r['command']}` ({r['date']})\n\n"
             f"Machine: {r['machine']}. Python {r['python']}, torch {r['torch']}. Loopback "
             f"only; {what}"
             f"{(' ' + note) if note else ''}\n\n```\n" + text + "\n```\n\n<details><summary>"
             "JSON</summary>\n\n```json\n" + json.dumps(r, indent=1) + "\n```\n</details>\n")
    with path.open("a") as f:
        f.write(head + block)
    return path
