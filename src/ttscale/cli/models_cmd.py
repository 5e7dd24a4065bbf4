"""`ttscale models` and `ttscale tasks`: what is shipped."""
from __future__ import annotations

import json

import typer

from ttscale.cli.app import app
from ttscale.models.registry import list_models
from ttscale.tasks import BUILTIN_TASKS


@app.command("models")
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
           calibration: bool = typer.Option(False, "--calibration", help="Check the family's cards "
                                            "against the calibration criteria (docs/training.md); exit 1 if one fails.")) -> None:
    """List the shipped models: name, parameters, path, parent."""
    if calibration:
        from ttscale.eval.calibration import check_family, format_findings

        findings = check_family()
        print(format_findings(findings))
        raise typer.Exit(0 if all(f.ok for f in findings) else 1)
    rows = [m.to_dict() for m in list_models()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<24} {'params':>10}  {'parent':<16} path")
    for r in rows:
        print(f"{r['name']:<24} {r['params']:>10,}  {str(r['parent'] or '-'):<16} {r['path']}")


@app.command("tasks")
def tasks(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """List the task families (a JSONL file of problems is accepted wherever a task is)."""
    rows = [{"name": n, "description": t.description, "levels": list(t.levels), "step_oracle": True}
            for n, t in BUILTIN_TASKS.items()]
    rows.append({"name": "jsonl", "description": "a .jsonl file in GSM8K or MATH-500 format, "
                 "graded with math-verify; pass its path as the task", "levels": None,
                 "step_oracle": False})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['name']:<10} {r['description']}")
