"""Generation backends behind one `Generator` protocol, and `load_generator` to pick one."""
from __future__ import annotations

from ttscale.engine.base import Generator
from ttscale.engine.hf import HFGenerator
from ttscale.engine.loader import DTYPES
from ttscale.engine.torch_engine import TorchEngine, parse_device
from ttscale.errors import unknown
from ttscale.models.registry import resolve_policy

BACKENDS = ("torch", "hf", "openai")


def load_generator(model: str, backend: str = "torch", device: str = "cpu",
                   dtype: str = "float32", **kw) -> Generator:
    """A Generator for a shipped policy name, a causal LM directory or a `.gguf` file.

    backend: "torch" (the project's own engine; kw: max_batch_size, max_seq_len,
    prefix_cache_bytes, prefill_tokens, compile, speculative, kv_memory,
    sparse_attention), "hf" (transformers
    generate()) or "openai"
    (model: base URL(s) of OpenAI-compatible servers; kw: model_name, n_params, n_layer,
    d_model or shape_from, api_key, chat, max_concurrency, timeout, max_retries).
    """
    if backend not in BACKENDS:
        raise unknown("backend", backend, BACKENDS)
    if backend == "openai":  # model: base URL(s), comma-separated; kw: see openai_backend.from_spec
        from ttscale.engine.openai_backend import from_spec

        return from_spec(model, **kw)
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    parse_device(device)
    path = resolve_policy(model)  # a verifier or non-generating checkpoint is refused here
    if backend == "torch":
        return TorchEngine(path, device=device, dtype=dtype, **kw)
    return HFGenerator(path, device=device, dtype=dtype, **kw)


__all__ = ["BACKENDS", "Generator", "HFGenerator", "TorchEngine", "load_generator"]
