"""Prometheus metrics in text format: requests by status, latency, tokens, FLOPs, queue depth."""
from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Counters and one latency histogram, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # (endpoint, status)
        self.latency_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.tokens: dict[str, int] = defaultdict(int)  # prompt / cached / completion
        self.flops = 0.0
        self.cancelled = 0
        self.strategies: dict[str, int] = defaultdict(int)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            i = next((k for k, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            self.latency_counts[i] += 1
            self.latency_sum += seconds

    def spent(self, prompt: int, cached: int, completion: int, flops: float,
              strategy: str) -> None:
        with self._lock:
            self.tokens["prompt"] += prompt
            self.tokens["cached"] += cached
            self.tokens["completion"] += completion
            self.flops += flops
            self.strategies[strategy] += 1

    def cancel(self) -> None:
        with self._lock:
            self.cancelled += 1

    def render(self, queue_depth: int, running: int) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP ttscale_requests_total Requests answered, by endpoint and status.",
                     "# TYPE ttscale_requests_total counter"]
            for (ep, status), v in sorted(self.requests.items()):
                lines.append(f'ttscale_requests_total{{endpoint="{ep}",status="{status}"}} {v}')
            lines += ["# HELP ttscale_request_duration_seconds Latency of answered requests.",
                      "# TYPE ttscale_request_duration_seconds histogram"]
            cum = 0
            for b, c in zip(BUCKETS, self.latency_counts):
                cum += c
                lines.append(f'ttscale_request_duration_seconds_bucket{{le="{b}"}} {cum}')
            cum += self.latency_counts[-1]
            lines += [f'ttscale_request_duration_seconds_bucket{{le="+Inf"}} {cum}',
                      f"ttscale_request_duration_seconds_sum {self.latency_sum:.6f}",
                      f"ttscale_request_duration_seconds_count {cum}",
                      "# HELP ttscale_tokens_total Tokens spent (all samples, nodes, verifier).",
                      "# TYPE ttscale_tokens_total counter"]
            for kind in ("prompt", "cached", "completion"):
                lines.append(f'ttscale_tokens_total{{kind="{kind}"}} {self.tokens[kind]}')
            lines += ["# HELP ttscale_flops_total Forward FLOPs spent, policy and verifier.",
                      "# TYPE ttscale_flops_total counter", f"ttscale_flops_total {self.flops:.6g}",
                      "# HELP ttscale_strategy_runs_total Answered requests by strategy.",
                      "# TYPE ttscale_strategy_runs_total counter"]
            for s, v in sorted(self.strategies.items()):
                lines.append(f'ttscale_strategy_runs_total{{strategy="{s}"}} {v}')
            lines += ["# HELP ttscale_cancelled_total Requests whose work was stopped early "
                      "(client gone or timeout).", "# TYPE ttscale_cancelled_total counter",
                      f"ttscale_cancelled_total {self.cancelled}",
                      "# HELP ttscale_queue_depth Requests waiting for a worker.",
                      "# TYPE ttscale_queue_depth gauge", f"ttscale_queue_depth {queue_depth}",
                      "# HELP ttscale_requests_running Requests being worked on.",
                      "# TYPE ttscale_requests_running gauge",
                      f"ttscale_requests_running {running}"]
        return "\n".join(lines) + "\n"
