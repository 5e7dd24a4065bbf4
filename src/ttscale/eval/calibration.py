"""Is the family calibrated so that test-time compute has room to work?

The checks read the evaluation rows of the model cards (`eval.json`) and test, per built-in
task: the largest model solves level 1 (greedy >= `top_level1`) and its greedy accuracy falls at
every level after that; on the middle levels every model's pass@n is at least `room` above its
greedy accuracy; and at every level each size is better (greedy) than the next smaller one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ttscale.errors import TTScaleError

MIDDLE_LEVELS = (2, 3, 4)


@dataclass(frozen=True)
class Finding:
    """One checked cell: which criterion, where, whether it holds, and the numbers behind it."""

    criterion: str  # "level1", "falls", "room" or "order"
    task: str
    level: int
    ok: bool
    detail: str


def check_calibration(rows: Iterable[dict[str, Any]], models: list[str], top_level1: float = 0.9,
                      room: float = 0.05) -> list[Finding]:
    """Findings for `rows` (dicts like the cards' eval.json), `models` ordered smallest first.

    The checks read the short mode (effort "low"), the family's yardstick; long-mode rows of
    the cards are reported beside them, not checked.
    """
    acc = {(r["model"], r["task"], r["level"]): r for r in rows if r.get("effort", "low") == "low"}
    missing = [m for m in models if not any(k[0] == m for k in acc)]
    if missing:
        raise TTScaleError(f"no evaluation rows for model(s) {missing}; rows have {sorted({k[0] for k in acc})}")
    tasks = sorted({k[1] for k in acc})
    largest = models[-1]
    out: list[Finding] = []
    for task in tasks:
        levels = sorted(k[2] for k in acc if k[0] == largest and k[1] == task)
        top = [acc[largest, task, lv]["greedy_acc"] for lv in levels]
        if levels:
            out.append(Finding("level1", task, levels[0], top[0] >= top_level1,
                               f"{largest} greedy {top[0]:.2f} (needs >= {top_level1:.2f})"))
        for lv, prev, cur in zip(levels[1:], top, top[1:]):
            out.append(Finding("falls", task, lv, cur < prev,
                               f"{largest} greedy {cur:.2f} after {prev:.2f} at level {lv - 1}"))
        for lv in levels:
            if lv in MIDDLE_LEVELS:
                for m in models:
                    r = acc.get((m, task, lv))
                    if r:
                        gain = r["pass_at_n"] - r["greedy_acc"]
                        out.append(Finding("room", task, lv, gain >= room - 1e-9,
                                           f"{m} pass@{r['n']} {r['pass_at_n']:.2f} vs greedy {r['greedy_acc']:.2f}"))
            for small, large in zip(models, models[1:]):
                a, b = acc.get((small, task, lv)), acc.get((large, task, lv))
                if a and b:
                    out.append(Finding("order", task, lv, b["greedy_acc"] > a["greedy_acc"],
                                       f"{large} {b['greedy_acc']:.2f} vs {small} {a['greedy_acc']:.2f}"))
    return out


def check_family(model_dirs: list[str | Path] | None = None, **kw: float) -> list[Finding]:
    """Findings from the cards of `model_dirs` (default: the shipped family, no fine-tunes)."""
    from ttscale.models.registry import family_models, model_info, resolve_model

    if model_dirs is None:
        infos = family_models()
    else:
        infos = [model_info(Path(resolve_model(str(d)))) for d in model_dirs]
    rows, names = [], []
    for m in sorted(infos, key=lambda m: m.params):
        card = Path(m.path) / "eval.json"
        if not card.exists():
            raise TTScaleError(f"{m.path} has no eval.json; write its card with `ttscale eval --model {m.path} --card`")
        card_rows = json.loads(card.read_text())
        rows += card_rows
        names.append(card_rows[0]["model"])
    return check_calibration(rows, names, **kw)


def format_findings(findings: list[Finding]) -> str:
    """One line per unmet criterion, or a line saying all hold."""
    bad = [f for f in findings if not f.ok]
    if not bad:
        return f"calibration: all {len(findings)} checks hold"
    lines = [f"calibration: {len(bad)} of {len(findings)} checks fail"]
    lines += [f"  {f.criterion} {f.task} level {f.level}: {f.detail}" for f in bad]
    return "\n".join(lines)
