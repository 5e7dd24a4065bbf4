"""`ttscale ARGS` run in-process as the console script runs it (user errors exit with status 2)."""
from __future__ import annotations

import sys


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr without surrounding blank space) of `ttscale ARGS`."""
    from ttscale.cli import main

    monkeypatch.setattr(sys, "argv", ["ttscale", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err.strip()
