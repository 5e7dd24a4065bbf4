"""`ttscale train sft` and `ttscale train family`: supervised training of the embedded family."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ttscale.cli.app import train_app
from ttscale.errors import out_of_range, unknown
from ttscale.models.family import SIZES
from ttscale.tasks import BUILTIN_TASKS, LEVELS


def _record_command(out: Path) -> None:
    meta = out / "training.json"
    if meta.exists():
        d = json.loads(meta.read_text())
        d["command"] = "ttscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        meta.write_text(json.dumps(d, indent=2) + "\n")


@train_app.command("sft")
def sft(
    out: Path = typer.Option(..., help="Output model directory (resumes from its checkpoint)."),
    size: str = typer.Option("ttscale-small", help=f"One of {', '.join(SIZES)}."),
    init_from: Optional[str] = typer.Option(None, help="Continue from this model directory or name."),
    task: Optional[list[str]] = typer.Option(None, help="Built-in task (repeatable); default: all."),
    level: Optional[list[int]] = typer.Option(None, help="Level (repeatable); default: 1-5."),
    steps: int = typer.Option(2000, help="Optimizer steps."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (schedule compressed) after this wall time."),
    batch_size: int = typer.Option(32, help="Sequences per step."),
    block: int = typer.Option(256, help="Tokens per sequence (512 fits long-mode chains)."),
    long_fraction: float = typer.Option(0.0, help="Share of examples in the long, step-checkable "
                                        "mode (--effort high), 0-1."),
    auto_fraction: float = typer.Option(0.0, help="Share of examples asked with the mode left to the "
                                        "model (--effort auto; either mode at random), 0-1."),
    lr: float = typer.Option(2e-3, help="Peak learning rate."),
    warmup: int = typer.Option(100, help="Warm-up steps."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Train a model on synthetic step-by-step solutions of the built-in tasks."""
    from ttscale.models.registry import resolve_model
    from ttscale.train.sft import SFTConfig, train_sft

    if size not in SIZES:
        raise unknown("size", size, SIZES)
    for t in task or []:
        if t not in BUILTIN_TASKS:
            raise unknown("task", t, BUILTIN_TASKS)
    for lv in level or []:
        if lv not in LEVELS:
            raise unknown("level", lv, LEVELS)
    if not 0.0 <= long_fraction <= 1.0:
        raise out_of_range("long_fraction", long_fraction, "0 <= long_fraction <= 1")
    if not 0.0 <= auto_fraction <= 1.0 - long_fraction:
        raise out_of_range("auto_fraction", auto_fraction, f"0 <= auto_fraction <= 1 - long_fraction "
                           f"= {1.0 - long_fraction:g}")
    if block < 64:
        raise out_of_range("block", block, ">= 64 tokens")
    cfg = SFTConfig(size=size, init_from=resolve_model(init_from) if init_from else None,
                    tasks=task or list(BUILTIN_TASKS), levels=level or list(LEVELS), steps=steps,
                    max_minutes=max_minutes, batch_size=batch_size, block=block,
                    long_fraction=long_fraction, auto_fraction=auto_fraction, lr=lr, warmup=warmup, seed=seed, device=device)
    summary = train_sft(cfg, out)
    _record_command(out)
    print(f"wrote {out} ({summary['params']:,} parameters, {summary['steps']} steps, "
          f"{summary['wall_s'] / 60:.1f} min, loss {summary['final_loss_ema']:.4f})")


@train_app.command("family")
def family(
    out: Path = typer.Option(Path("models"), help="Directory that receives one folder per size."),
    name: Optional[list[str]] = typer.Option(None, help="Only these sizes (repeatable)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Reproduce the shipped family from scratch (docs/training.md), then write the model cards."""
    from ttscale.eval.api import evaluate_grid
    from ttscale.eval.card import CARD_PROBLEMS
    from ttscale.train.family import RECIPE, train_family

    for n in name or []:
        if n not in RECIPE:
            raise unknown("size", n, RECIPE)
    summaries = train_family(out, name, device=device)
    for n in summaries:
        _record_command(out / n)
    evaluate_grid(models=[str(out / n) for n in summaries], num_problems=CARD_PROBLEMS, n=16,
                  write_cards=True)
    print(f"wrote {', '.join(str(out / n) for n in summaries)}")
    if len(summaries) > 1:
        from ttscale.eval.calibration import check_family, format_findings

        print(format_findings(check_family([out / n for n in summaries])))
