"""The transformers backend: `generate()` on any AutoModelForCausalLM, the reference implementation.

Broadest model coverage (any architecture transformers loads, a GGUF file included), but each
request runs on its own and its prompt is prefilled once per sample (`num_return_sequences`
repeats it), which its usage reports: FLOPs count the prompt n times and nothing is cached.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ttscale.engine.flops import ModelShape
from ttscale.engine.loader import parse_dtype
from ttscale.engine.sampling import check_params, normalize_stop
from ttscale.engine.stops import finish_text
from ttscale.engine.torch_engine import parse_device
from ttscale.errors import TTScaleError
from ttscale.types import Completion, GenerationRequest, GenerationResult, Usage


class HFGenerator:
    """A `Generator` over transformers' `generate()`; model is a directory or a .gguf file."""

    def __init__(self, model: str | Path, device: str = "cpu", dtype: str = "float32",
                 model_name: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = parse_device(device)
        path = Path(model)
        kw = {}
        if path.suffix == ".gguf":
            kw["gguf_file"], path = path.name, path.parent
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=parse_dtype(dtype), **kw)
        self.model.to(self.device).eval()
        cfg = self.model.config
        self.model_name = model_name or Path(model).name
        self.context_length = int(getattr(cfg, "max_position_embeddings", 2048))
        n_params = sum(p.numel() for p in self.model.parameters())
        self.shape = ModelShape(n_params, cfg.num_hidden_layers, cfg.hidden_size)
        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else cfg.eos_token_id
        self.eos = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else next(iter(self.eos), 0)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            try:
                out.append(self._one(r))
            except TTScaleError as e:
                out.append(GenerationResult([], Usage(), error=str(e)))
            except Exception as e:  # noqa: BLE001 - one request's failure stays its own
                out.append(GenerationResult([], Usage(), error=f"{type(e).__name__}: {e}"))
        return out

    @torch.inference_mode()
    def _one(self, r: GenerationRequest) -> GenerationResult:
        from transformers import GenerationConfig

        p = r.params
        check_params(p, self.context_length)
        ids = self.tokenize(r.prompt) if isinstance(r.prompt, str) else list(r.prompt)
        if not ids or len(ids) >= self.context_length:
            raise TTScaleError(f"prompt has {len(ids)} tokens; accepted: 1..{self.context_length - 1} "
                               f"(the model's context is {self.context_length})")
        stops = normalize_stop(p.stop)
        want_lp = p.logprobs or p.top_logprobs > 0
        sample = p.temperature > 0
        cfg = GenerationConfig(
            max_new_tokens=min(p.max_tokens, self.context_length - len(ids)), do_sample=sample,
            num_return_sequences=p.n, temperature=p.temperature if sample else None,
            top_p=p.top_p if sample else None, top_k=p.top_k if sample else None,
            eos_token_id=sorted(self.eos) or None, pad_token_id=self.pad_id,
            stop_strings=stops or None, return_dict_in_generate=True, output_logits=want_lp)
        x = torch.tensor([ids], device=self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if p.seed is not None:
                torch.manual_seed(p.seed)
            res = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=cfg,
                                      tokenizer=self.tokenizer if stops else None)
        seqs = res.sequences[:, len(ids):].tolist()
        lps = torch.stack(res.logits, 1).float().log_softmax(-1) if want_lp else None
        usage = Usage(prompt_tokens=len(ids))
        completions = []
        for i, gen in enumerate(seqs):
            end = next((k for k, t in enumerate(gen) if t in self.eos), None)
            n_gen = end + 1 if end is not None else len(gen)
            kept = gen[:end] if end is not None else gen
            text, keep, cut = finish_text(self.detokenize, ids, kept, stops)
            usage.completion_tokens += n_gen
            usage.flops += self.shape.span_flops(0, len(ids)) + self.shape.span_flops(len(ids), n_gen)
            lp = top = None
            if want_lp:
                row = lps[i, :keep]
                lp = row.gather(1, torch.tensor(kept[:keep], device=row.device)[:, None])[:, 0].tolist()
                if p.top_logprobs:
                    tv, ti = row.topk(p.top_logprobs, -1)
                    top = [{self.tokenizer.decode([t]): v for v, t in zip(vs, ts)}
                           for vs, ts in zip(tv.tolist(), ti.tolist())]
            reason = "stop" if end is not None or cut else "length"
            completions.append(Completion(text, kept[:keep], reason, lp if want_lp else None, top))
        return GenerationResult(completions, usage)
