"""Where a trained model comes from, and shipping it beside the family.

A model trained in several runs (SFT from a shipped model, more SFT, then RL) names only the
directory it started from in its `training.json` (`config.init_from` for SFT, `parent_path` for
RL and distillation). `lineage` follows those links back to the shipped model at the root and
returns the commands of the runs in between, so that a shipped child's card can say exactly how
it was made; `ship_model` copies such a model into the shipped models with that record.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ttscale.errors import TTScaleError
from ttscale.models.registry import list_models, models_dir

# What a shipped model directory holds (the rest of a run directory, checkpoints and logs of the
# trainer, stays behind).
SHIPPED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "training.json", "train_log.jsonl")


def _started_from(meta: dict) -> str | None:
    return meta.get("parent_path") or (meta.get("config") or {}).get("init_from")


def _shipped_name(ref: str) -> str | None:
    for m in list_models():
        if ref == m.name or Path(ref).resolve() == Path(m.path).resolve():
            return m.name
    return None


def lineage(model_dir: str | Path) -> tuple[str | None, list[str]]:
    """(shipped ancestor, commands of the runs after it up to and including `model_dir`'s own).

    The ancestor is None for a model trained from scratch; a link to a directory that no longer
    exists ends the walk there and is named as the ancestor.
    """
    stages: list[str] = []
    here, seen = Path(model_dir), set()
    while True:
        shipped = _shipped_name(str(here))
        if shipped is not None:
            return shipped, stages[::-1]
        key = here.resolve()
        if key in seen:
            raise TTScaleError(f"training.json links of {model_dir} form a cycle at {here}")
        seen.add(key)
        meta_path = here / "training.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        stages.append(meta.get("command") or f"(a run that recorded no command, written to {here})")
        prev = _started_from(meta)
        if prev is None:
            return None, stages[::-1]
        shipped = _shipped_name(prev)
        if shipped is not None or not Path(prev).is_dir():
            return shipped or prev, stages[::-1]
        here = Path(prev)


def ship_model(src: str | Path, name: str, root: str | Path | None = None) -> Path:
    """Copy the trained policy `src` into the shipped models as `name` (under `root`, default the
    package's models directory) with `parent` set to its shipped ancestor and `stages` to the
    commands before its own run; returns the new directory. Its card is written afterwards
    (`ttscale.train.rl.write_trained_card`), from an evaluation of the shipped copy."""
    src = Path(src)
    if not (src / "config.json").is_file() or not (src / "training.json").is_file():
        raise TTScaleError(f"{src} is not a trained model directory (config.json and training.json); "
                           "accepted: the --out directory of a finished `ttscale train` run")
    dest = Path(root) if root is not None else models_dir()
    target = dest / name
    if target.exists():
        raise TTScaleError(f"{target} already exists; accepted: a name no shipped model has")
    parent, stages = lineage(src)
    target.mkdir(parents=True)
    for f in SHIPPED_FILES:
        if (src / f).is_file():
            shutil.copy2(src / f, target / f)
    meta = json.loads((target / "training.json").read_text())
    meta.update(parent=parent, stages=stages[:-1], started_from=str(src))
    meta.pop("parent_path", None)
    (target / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target
