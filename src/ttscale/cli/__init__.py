"""Command-line entry point: thin commands over the Python API, one module per command group.

User errors (TTScaleError) print one line and exit with status 2, without a traceback.
"""
from __future__ import annotations

import sys

from ttscale.cli.app import app
from ttscale.errors import TTScaleError

# Importing a command module registers its commands.
from ttscale.cli import (  # noqa: E402,F401
    models_cmd, eval_cmd, train_cmd, engine_cmd, strategy_cmd, search_cmd, sweep_cmd, rl_cmd,
    serve_cmd,
)


def main() -> None:
    try:
        app()
    except TTScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
