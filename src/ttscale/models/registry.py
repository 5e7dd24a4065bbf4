"""Where the shipped models live, and resolving a model name or path."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ttscale.errors import TTScaleError, unknown


def models_dir() -> Path:
    """The shipped models: `$TTSCALE_MODELS_DIR`, else the package's `shipped_models` (package
    data in an installed wheel; in a source checkout a link to `models/` at the root)."""
    env = os.environ.get("TTSCALE_MODELS_DIR")
    return Path(env) if env else (Path(__file__).resolve().parent.parent / "shipped_models").resolve()


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
    params = meta.get("params") or count_params(cfg)
    return ModelInfo(path.name, int(params), str(path), meta.get("parent"), meta.get("kind", "policy"))


def count_params(cfg: dict) -> int:
    """Parameters of a Llama-style decoder from its config (no weights needed)."""
    d, L, ff, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // heads
    kv_heads = cfg.get("num_key_value_heads") or heads
    per_layer = 2 * d * heads * hd + 2 * d * kv_heads * hd + 3 * d * ff + 2 * d
    emb = v * d * (1 if cfg.get("tie_word_embeddings") else 2)
    return L * per_layer + emb + d


def list_models() -> list[ModelInfo]:
    """Shipped models, smallest first."""
    root = models_dir()
    found = [model_info(p) for p in sorted(root.iterdir()) if (p / "config.json").exists()] if root.exists() else []
    return sorted(found, key=lambda m: m.params)


def family_models() -> list[ModelInfo]:
    """The shipped family: policies trained from scratch, smallest first (no shipped children,
    which name a `parent`, and no verifiers)."""
    return [m for m in list_models() if m.kind == "policy" and not m.parent]


def resolve_model(name_or_path: str) -> str:
    """The directory of a shipped model given its short name, a model directory (with
    config.json) or a `.gguf` file; any kind of model (policies and verifiers)."""
    p = Path(name_or_path)
    if (p / "config.json").is_file() or p.suffix == ".gguf" and p.is_file():
        return str(p)
    for m in list_models():
        if m.name == name_or_path:
            return m.path
    if p.suffix == ".gguf" or p.is_dir() or os.sep in name_or_path:
        what = "is not a model directory (no config.json)" if p.is_dir() else "does not exist"
        raise TTScaleError(f"model {name_or_path!r} {what}; accepted: {_ACCEPTED}")
    raise unknown("model", name_or_path, [m.name for m in list_models()] +
                  ["a Hugging Face model directory", "a .gguf file"])


def resolve_policy(name_or_path: str) -> str:
    """`resolve_model` for a model that generates: a causal language model (shipped policy,
    `*ForCausalLM` directory or GGUF language model). A verifier or any other checkpoint is
    a one-line TTScaleError."""
    path = Path(resolve_model(name_or_path))
    why = _gguf_not_policy(path) if path.suffix == ".gguf" else _dir_not_policy(path)
    if why:
        raise TTScaleError(f"model {name_or_path!r} is {why}, not a causal language model "
                           f"that generates; accepted: {_ACCEPTED}")
    return str(path)


_ACCEPTED = ("a shipped policy name, a Hugging Face causal LM directory (config.json with a "
             "*ForCausalLM architecture) or a .gguf language model file")
# GGUF architectures that encode or embed text instead of generating it
_GGUF_ENCODERS = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                            "jina-bert-v3", "t5encoder", "clip", "neo-bert", "modern-bert"})


def _dir_not_policy(path: Path) -> str | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
        meta_path = path / "training.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, ValueError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    kind = meta.get("kind", "policy")
    if kind != "policy":
        return f"a verifier (kind {kind!r} in its training.json)"
    archs = cfg.get("architectures") or []
    if archs and not any(str(a).endswith("ForCausalLM") for a in archs):
        return f"a {'/'.join(map(str, archs))} checkpoint"
    return None


def _gguf_not_policy(path: Path) -> str | None:
    from ttscale.models.gguf_meta import read_gguf_header

    header = read_gguf_header(path)
    kind = header.metadata.get("general.type", "model")
    if kind != "model":
        return f"a GGUF {kind!r} file (general.type)"
    if not header.tensors:
        return "a GGUF file without weights (vocabulary only)"
    if header.architecture in _GGUF_ENCODERS:
        return f"a GGUF {header.architecture!r} encoder"
    return None


_count_params = count_params  # the old private name, still imported elsewhere
