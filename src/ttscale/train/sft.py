"""Supervised fine-tuning of the embedded family on synthetic chains of thought.

Plain PyTorch on a transformers `LlamaForCausalLM`: packed sequences, loss on solution tokens
only, bf16 autocast where the CPU supports it, AdamW with warmup and cosine decay. Checkpoints
let a killed run resume; a JSONL log records the loss.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, LlamaForCausalLM

from ttscale.errors import unknown
from ttscale.models.family import CONTEXT, SIZES
from ttscale.models.tokenizer import build_tokenizer
from ttscale.tasks import BUILTIN_TASKS, LEVELS
from ttscale.train.data import IGNORE, packed_batches


@dataclass
class SFTConfig:
    """Settings of one SFT run; every field is recorded in the model card."""

    size: str = "ttscale-small"  # a name in ttscale.models.family.SIZES (ignored with init_from)
    init_from: str | None = None  # continue from an existing model directory instead
    tasks: list[str] = field(default_factory=lambda: list(BUILTIN_TASKS))
    levels: list[int] = field(default_factory=lambda: list(LEVELS))
    steps: int = 2000
    max_minutes: float | None = None  # stop early (schedule compressed) after this wall time
    batch_size: int = 32  # sequences per step
    block: int = 256  # tokens per sequence
    long_fraction: float = 0.0  # share of examples in the long mode (effort "high")
    auto_fraction: float = 0.0  # share asked with the mode left to the model (effort "auto")
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True  # autocast; weights stay fp32
    checkpoint_every_s: float = 300.0
    threads: int | None = None


def _lr_factor(progress: float, step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _init_model(cfg: SFTConfig) -> LlamaForCausalLM:
    if cfg.init_from:
        model = LlamaForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        # RoPE has no learned positions: a parent built for shorter chains continues at the
        # family's context (long-mode chains reach about 600 tokens).
        model.config.max_position_embeddings = max(model.config.max_position_embeddings, CONTEXT)
        return model
    if cfg.size not in SIZES:
        raise unknown("model size", cfg.size, SIZES)
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(SIZES[cfg.size].config())


def save_model(model: LlamaForCausalLM, out: Path) -> None:
    """Save in Hugging Face format: config, safetensors weights, tokenizer, generation config."""
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                               max_new_tokens=128, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer().save_pretrained(out)


def train_sft(cfg: SFTConfig, out: str | Path, progress: bool = True, batches=None) -> dict:
    """Train and save a model to `out`; resume from `out/checkpoint.pt` if it exists.

    Returns a summary (steps, tokens, wall time, final loss) that is also written to
    `out/training.json`.
    `batches` (an iterator of (input_ids, labels)) replaces the synthetic task data, e.g. with
    the verified search solutions of expert iteration (`ttscale.train.distill`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    model = _init_model(cfg).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    ckpt_path = out / "checkpoint.pt"
    log_path = out / "train_log.jsonl"
    step, elapsed_before = 0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed_before = ckpt["step"], ckpt["elapsed"]
    # The data stream is seeded by (seed, step) so that a resumed run sees fresh, reproducible data.
    if batches is None:
        batches = packed_batches(cfg.tasks, cfg.levels, cfg.batch_size, cfg.block,
                                 seed=cfg.seed * 1_000_003 + step, long_fraction=cfg.long_fraction,
                                 auto_fraction=cfg.auto_fraction)
    autocast = cfg.bf16 and (device.type == "cuda" or torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX"))
    t_start = time.time()
    last_ckpt = t_start
    tokens = 0
    loss_ema = None
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"sft {out.name}")
    model.train()
    with open(log_path, "a") as log:
        while step < cfg.steps:
            elapsed = elapsed_before + time.time() - t_start
            frac = step / cfg.steps
            if cfg.max_minutes:
                frac = max(frac, elapsed / (cfg.max_minutes * 60))
                if frac >= 1.0:
                    break
            lr = cfg.lr * _lr_factor(frac, step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)),
                                                     y.view(-1), ignore_index=IGNORE)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; last checkpoint kept at {ckpt_path}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            tokens += x.numel()
            lv = loss.item()
            loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}", lr=f"{lr:.2e}")
            if step % 10 == 0:
                log.write(json.dumps({"step": step, "loss": lv, "lr": lr,
                                      "elapsed_s": round(elapsed_before + time.time() - t_start, 1)}) + "\n")
                log.flush()
            if time.time() - last_ckpt > cfg.checkpoint_every_s:
                _checkpoint(model, opt, step, elapsed_before + time.time() - t_start, ckpt_path)
                last_ckpt = time.time()
    bar.close()
    wall = elapsed_before + time.time() - t_start
    save_model(model, out)
    summary = {"config": asdict(cfg), "steps": step, "tokens_this_session": tokens,
               "tokens_total": step * cfg.batch_size * cfg.block, "wall_s": round(wall, 1),
               "final_loss_ema": loss_ema, "params": sum(p.numel() for p in model.parameters()),
               "torch": torch.__version__, "device": str(device)}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    if ckpt_path.exists():
        ckpt_path.unlink()
    return summary


def _checkpoint(model, opt, step: int, elapsed: float, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": elapsed}, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write keeps the previous checkpoint
