"""The typer application and its command groups; command modules register onto these."""
from __future__ import annotations

import typer

app = typer.Typer(help="ttscale: spend inference compute where it pays most.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
train_app = typer.Typer(help="Train models: SFT, PRM, RL, distillation.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; each run is saved in --out (default: the working "
                        "directory) and appended to its benchmarks.md.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")
