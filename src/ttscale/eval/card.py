"""Model cards: README.md inside a model directory, with how it was made and how well it does."""
from __future__ import annotations

import json
from pathlib import Path

from ttscale.eval.evaluate import EvalResult, format_table

CARD_TOLERANCE = 0.10  # a re-run on the same fixed sample must land within this of the card
CARD_PROBLEMS = 200  # problems per (task, level) in the shipped cards (countdown level 1 has 226 test problems)


def merged_rows(model_dir: Path, rows: list[EvalResult]) -> list[EvalResult]:
    """`rows`, after the card's earlier rows of other (task, level, effort) cells: a card run at
    `--effort high` adds the long-mode rows beside the short-mode ones instead of replacing them."""
    path = model_dir / "eval.json"
    old = [EvalResult(**r) for r in json.loads(path.read_text())] if path.exists() else []
    cells = {(r.task, r.level, r.effort) for r in rows}
    models = {r.model for r in rows}
    kept = [r for r in old if (r.task, r.level, r.effort) not in cells and r.model in models]
    return sorted(kept + rows, key=lambda r: (r.effort != "low", r.task, r.level or 0))


def reproduce_commands(name: str, rows: list[EvalResult]) -> list[str]:
    """One `ttscale eval` command per (effort, problems, n) group of the card's rows."""
    groups = sorted({(r.effort != "low", r.effort, r.num_problems, r.n) for r in rows})
    return [f"ttscale eval --model {name} --num-problems {k} --n {n}"
            + ("" if effort == "low" else f" --effort {effort}") for _, effort, k, n in groups]


def write_card(model_dir: str | Path, rows: list[EvalResult], eval_command: str | None = None) -> Path:
    """Write `model_dir/README.md` from `training.json` and the evaluation rows.

    The rows are also stored in `eval.json` so tests can compare a re-run with the card; rows of
    other cells (another effort) already there are kept. `eval_command`: how the new rows were
    made, when it differs from the plain `ttscale eval` the card would otherwise name.
    """
    model_dir = Path(model_dir)
    rows = merged_rows(model_dir, rows)
    meta_path = model_dir / "training.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    cfg = meta.get("config", {})
    parent = meta.get("parent")
    command = meta.get("command", "ttscale train family --out models  (see docs/training.md)")
    one_effort = len({r.effort for r in rows}) == 1
    commands = [eval_command] if eval_command and one_effort else reproduce_commands(model_dir.name, rows)
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [ttscale]", "---",
        f"# {model_dir.name}", "",
        f"A small Llama-architecture decoder of the ttscale embedded family "
        f"({meta['params']:,} parameters), character-level tokenizer." if "params" in meta else
        "A small Llama-architecture decoder of the ttscale embedded family, character-level tokenizer.", "",
        "## Training", "",
        f"- parent: {parent or 'none (trained from scratch with SFT)'}",
        *[f"- stage {i} (before this one): `{c}`" for i, c in enumerate(meta.get("stages", []), 1)],
        f"- command: `{command}`",
        f"- data: synthetic step-by-step solutions of the built-in tasks {cfg.get('tasks', meta.get('tasks', '?'))}, "
        f"levels {cfg.get('levels', '?')}, train split only (fresh problems every step)"
        + (f", {cfg['long_fraction']:.0%} of them in the long mode"
           if cfg.get("long_fraction") else ""),
        f"- steps: {meta.get('steps', '?')} (batch {cfg.get('batch_size', '?')} x {cfg.get('block', '?')} tokens, "
        f"{meta.get('tokens_total', 0):,} tokens)",
        f"- wall time: {meta.get('wall_s', 0) / 60:.1f} min on {meta.get('device', '?')} "
        f"(torch {meta.get('torch', '?')})",
        f"- final training loss (EMA): {meta.get('final_loss_ema') or float('nan'):.4f}",
        *([f"- stored as: {meta['stored_as']}"] if meta.get("stored_as") else []),
        *([f"- before this run: {meta['stage1']}"] if meta.get("stage1") else []), "",
        "## Accuracy", "",
        f"Test split, fixed problems (seed 0). Greedy decoding; maj@n and pass@n from n samples at "
        f"temperature 1.0. Effort `low` asks the short chains, `high` the long, step-checkable mode "
        f"(`--effort high`). Reproduce with {' and '.join(f'`{c}`' for c in commands)}; "
        f"a re-run lands within "
        f"{CARD_TOLERANCE:.0%} of these figures (sampling order may differ across backends).", "",
        format_table(rows), "",
    ]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    (model_dir / "eval.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    return path
