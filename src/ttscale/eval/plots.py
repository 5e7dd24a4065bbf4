"""PNG plots of a sweep's analysis (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _by_strategy(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list] = defaultdict(list)
    for p in points:
        out[p["strategy"]].append(p)
    return {k: sorted(v, key=lambda p: p["flops"]) for k, v in sorted(out.items())}


def _save_accuracy_plot(fig, ax, path: Path, xlabel: str, title: str) -> None:
    """What the accuracy-against-cost plots share: log x, labels, grid, legend; write and close."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(a: dict[str, Any], path: Path) -> None:
    """Accuracy against FLOPs per strategy (log x), the frontier and the planner's curve."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for s, ps in _by_strategy(a["curves"]).items():
        style = ":" if s == "pass_at_k" else "-"
        ax.plot([p["flops"] for p in ps], [p["accuracy"] for p in ps], style, marker="o", ms=3,
                label=s + (" (oracle)" if s == "pass_at_k" else ""))
    fr = a["frontier"]
    if fr:
        ax.step([p["flops"] for p in fr], [p["accuracy"] for p in fr], "k--", where="post",
                lw=1.5, label="compute-optimal frontier")
    pc = a.get("planner_curve")
    if pc:
        ax.plot([p["flops"] for p in pc], [p["accuracy"] for p in pc], "k-", lw=2.2,
                label="planner (held-out)")
    s = (a.get("headline") or {}).get("small_search_vs_large_greedy")
    if s:
        ax.plot([s["large_flops"]], [s["large_accuracy"]], "r*", ms=14,
                label=f"{s['large_model']} greedy")
    _save_accuracy_plot(fig, ax, path, "FLOPs per problem",
                        f"{a['model']}: accuracy against inference compute")


def plot_bins(a: dict[str, Any], path: Path) -> None:
    """One panel per difficulty bin: accuracy against FLOPs per strategy."""
    bins = a.get("bins") or []
    if not bins:
        return
    fig, axes = plt.subplots(1, len(bins), figsize=(3.6 * len(bins), 3.4), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], bins):
        for s, ps in _by_strategy(b["points"]).items():
            ax.plot([p["flops"] for p in ps], [p["accuracy"] for p in ps], marker="o", ms=3, label=s)
        lo, hi = b["difficulty"]
        ax.set_title(f"bin {b['bin']}: difficulty {lo:.2f}-{hi:.2f}\n({b['instances']} instances)",
                     fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_coverage(a: dict[str, Any], path: Path) -> None:
    """pass@k against k with the fitted exp(a·k^b)."""
    import numpy as np

    cov = a.get("coverage") or []
    if not cov:
        return
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ks = [c["k"] for c in cov]
    ax.plot(ks, [c["coverage"] for c in cov], "o", label="measured (unbiased pass@k)")
    f = a["fits"].get("pass_at_k") or {}
    if f.get("a") is not None:
        k = np.linspace(1, max(ks), 100)
        ax.plot(k, np.exp(f["a"] * k ** f["b"]), "-", label=f"exp({f['a']:.2f}·k^{f['b']:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("coverage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(a: dict[str, Any], path: Path) -> None:
    """Accuracy against wall seconds per problem per strategy (log x), with its frontier."""
    pts = [p for p in a["curves"] if p.get("latency_s") and not p.get("oracle")]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for s, ps in _by_strategy(pts).items():
        ps = sorted(ps, key=lambda p: p["latency_s"])
        ax.plot([p["latency_s"] for p in ps], [p["accuracy"] for p in ps], "o", ms=3, label=s)
    fr = a.get("latency_frontier") or []
    if fr:
        ax.step([p["latency_s"] for p in fr], [p["accuracy"] for p in fr], "k--", where="post",
                lw=1.5, label="accuracy-latency frontier")
    _save_accuracy_plot(fig, ax, path, "wall seconds per problem",
                        f"{a['model']}: accuracy against latency")


def plot_all(a: dict[str, Any], out: Path) -> dict[str, str]:
    """Write every plot into `out`; returns name -> file name (relative, for Markdown)."""
    made = {}
    for name, fn in (("accuracy", plot_accuracy), ("bins", plot_bins), ("coverage", plot_coverage),
                     ("latency", plot_latency)):
        path = out / f"{name}.png"
        fn(a, path)
        if path.exists():
            made[name] = path.name
    return made
