"""Forward FLOPs of a decoder (Kaplan et al. 2020): about 2·N + 2·n_layer·n_ctx·d_model per token;
the shape of a model read from its files (`shape_from`), or unknown (`UnknownShape`, NaN FLOPs)."""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """What FLOP counting needs to know of a model."""

    n_params: int  # non-embedding parameters are what matter; we count all, as is common
    n_layer: int
    d_model: int
    known = True  # False for UnknownShape

    def token_flops(self, position: int) -> float:
        """FLOPs of the forward pass of one token attending to `position` earlier tokens."""
        return 2.0 * self.n_params + 2.0 * self.n_layer * position * self.d_model

    def span_flops(self, start: int, count: int) -> float:
        """FLOPs of computing `count` tokens at positions start .. start+count-1."""
        if count <= 0:
            return 0.0
        positions_sum = count * start + count * (count - 1) // 2
        return 2.0 * self.n_params * count + 2.0 * self.n_layer * self.d_model * positions_sum


@dataclass(frozen=True)
class UnknownShape:
    """The shape of a remote model nobody described: every FLOP count is NaN ("unknown")."""

    known = False

    n_params: int = 0
    n_layer: int = 0
    d_model: int = 0

    def token_flops(self, position: int) -> float:
        return math.nan

    def span_flops(self, start: int, count: int) -> float:
        return 0.0 if count <= 0 else math.nan


SHAPE_FLAGS = "--n-params, --n-layer and --d-model, or --shape-from"


def shape_from(source: str | Path) -> ModelShape:
    """The ModelShape of a local model: a shipped name, a HF directory (safetensors headers
    count the parameters exactly; without weights, config.json alone), a config.json file, or a
    `.gguf` file (its header: `<arch>.block_count`, `<arch>.embedding_length`, tensor sizes)."""
    from ttscale.errors import TTScaleError

    path = Path(source)
    if path.suffix == ".gguf" and path.is_file():
        return _gguf_shape(path)
    if path.is_file() and path.suffix == ".json":
        return _config_shape(path, None)
    if not (path / "config.json").is_file():
        from ttscale.models.registry import list_models

        found = [m.path for m in list_models() if m.name == str(source)]
        if not found:
            raise TTScaleError(f"shape source {str(source)!r} is not a model: accepted: a HF "
                               "model directory or its config.json, a .gguf file, or a shipped "
                               "model name")
        path = Path(found[0])
    return _config_shape(path / "config.json", path)


def _config_shape(config: Path, weights_dir: Path | None) -> ModelShape:
    from ttscale.errors import TTScaleError

    try:
        cfg = json.loads(config.read_text())
        cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model's
        n_layer, d_model = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TTScaleError(f"{config}: not a model config with num_hidden_layers and "
                           f"hidden_size ({type(e).__name__}: {e})") from None
    n_params = _safetensors_params(weights_dir) if weights_dir is not None else 0
    if not n_params:
        from ttscale.models.registry import count_params

        try:
            n_params = count_params(cfg)
        except KeyError as e:
            raise TTScaleError(f"{config}: cannot count parameters without weights (missing "
                               f"{e}); give a directory with its safetensors") from None
    return ModelShape(int(n_params), n_layer, d_model)


def _safetensors_params(path: Path) -> int:
    """Parameters counted from the safetensors headers in `path` (no weights read)."""
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def _gguf_shape(path: Path) -> ModelShape:
    from ttscale.errors import TTScaleError
    from ttscale.models.gguf_meta import read_gguf_header

    h = read_gguf_header(path)
    arch = h.architecture
    try:
        n_layer = int(h.metadata[f"{arch}.block_count"])
        d_model = int(h.metadata[f"{arch}.embedding_length"])
    except (KeyError, TypeError, ValueError):
        raise TTScaleError(f"{path}: its GGUF metadata lacks {arch}.block_count or "
                           f"{arch}.embedding_length; pass {SHAPE_FLAGS} instead") from None
    return ModelShape(h.n_params(), n_layer, d_model)
