"""Where the shipped models live, and resolving a model name or path."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ttscale.errors import unknown


def models_dir() -> Path:
    """The shipped models: `$TTSCALE_MODELS_DIR`, else `models/` at the repository root."""
    env = os.environ.get("TTSCALE_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "models"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int
    path: str
    parent: str | None
    kind: str = "policy"  # "policy" (a generator) or "prm"/"orm" (a learned verifier)

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "path": self.path, "parent": self.parent,
                "kind": self.kind}


def model_info(path: Path) -> ModelInfo:
    """Name, parameters, path, parent and kind of the model directory `path`."""
    cfg = json.loads((path / "config.json").read_text())
    meta_path = path / "training.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    params = meta.get("params") or _count_params(cfg)
    return ModelInfo(path.name, int(params), str(path), meta.get("parent"), meta.get("kind", "policy"))


def _count_params(cfg: dict) -> int:
    d, L, ff, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = d * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff + 2 * d
    emb = v * d * (1 if cfg.get("tie_word_embeddings") else 2)
    return L * per_layer + emb + d


def list_models() -> list[ModelInfo]:
    """Shipped models, smallest first."""
    root = models_dir()
    found = [model_info(p) for p in sorted(root.iterdir()) if (p / "config.json").exists()] if root.exists() else []
    return sorted(found, key=lambda m: m.params)


def resolve_model(name_or_path: str) -> str:
    """The directory of a shipped model given its short name, or a path to a model directory."""
    p = Path(name_or_path)
    if (p / "config.json").exists() or p.suffix == ".gguf" and p.exists():
        return str(p)
    for m in list_models():
        if m.name == name_or_path:
            return m.path
    raise unknown("model", name_or_path, [m.name for m in list_models()] + ["a model directory"])
