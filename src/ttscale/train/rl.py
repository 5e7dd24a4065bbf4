"""RL from verifiable rewards: GRPO with TRL's `GRPOTrainer` on the task oracle's rewards.

For each prompt the policy samples a group of `num_generations` completions; each completion's
advantage is its reward minus the group mean, over the group std; the loss is the clipped
policy-gradient objective, plus `beta` times the KL to the frozen starting model. TRL does the
sampling, advantages, clipping and KL; this module chooses the data and the rewards
(`ttscale.train.rewards`), checks the configuration before any work starts, logs one JSONL
record per step, checkpoints, resumes from the last complete checkpoint, and turns a failure
(a reward function that raises, a non-finite loss, an interruption) into one clear message
that names the checkpoint that was kept.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.models.registry import resolve_model
from ttscale.tasks import BuiltinTask, Task, get_task
from ttscale.tasks.effort import EFFORTS, LONG_MODE_TASKS, apply_effort
from ttscale.train.rewards import (RewardConfig, RewardFunc, checked, oracle_reward_funcs,
                                   zero_std_fraction)
from ttscale.types import Problem

TRL_VERSION = "1.16.0"  # pinned in pyproject.toml; the trainer's internals changed across releases
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
ROLLOUTS = ("engine", "transformers")  # who samples the groups: our TorchEngine or TRL's generate()
SCALE_REWARDS = ("group", "batch", "none")
LEARN = ("all", "mode")  # which completion tokens GRPO trains (see RLConfig.learn)


@dataclass
class RLConfig:
    """Settings of one GRPO run; every field is recorded in `training.json` and the model card.

    Names follow TRL's `GRPOConfig` where the concept is the same.
    """

    task: str = "arith"  # one task, or several separated by commas ("arith,countdown")
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    steps: int = 100  # optimizer steps
    num_generations: int = 8  # samples per prompt (one group)
    generation_batch_size: int = 32  # completions per step: generation_batch_size / num_generations prompts
    num_iterations: int = 1  # policy updates per generated batch; > 1 makes the ratio clip bite
    max_completion_length: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    learning_rate: float = 1e-4
    beta: float = 0.02  # KL weight to the starting model; 0 loads no reference and logs no KL
    epsilon: float = 0.2  # clip range of the probability ratio
    loss_type: str = "dapo"  # token-level normalisation (TRL's default)
    # Divide advantages by the batch std ("group": per-group std as in the GRPO paper; "none":
    # Dr. GRPO). Group scaling blows a small length reward up to a full advantage in groups where
    # every sample is wrong, which collapsed a length-penalised run (docs/results.md).
    scale_rewards: str = "batch"
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    rewards: RewardConfig = field(default_factory=RewardConfig)
    num_train_problems: int = 2000  # at most this many distinct training problems (then cycled)
    rollout: str = "engine"  # ROLLOUTS; "engine" is TorchEngine (train/rollout.py)
    resample_flat: int = 0  # rounds of replacing all-right / all-wrong groups by fresh problems (engine)
    effort: str = "low"  # the prompts' mode (tasks/effort.py); "auto": the policy picks it after the question
    # "all": every completion token; "mode": only the mode line of auto prompts (effort "auto"), so RL
    # learns when to think longer and no chain token is trained (they still drift through shared
    # weights; train/rollout.py)
    learn: str = "all"
    save_steps: int = 20  # checkpoint every this many steps (two are kept)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None

    @property
    def prompts_per_step(self) -> int:
        return self.generation_batch_size // self.num_generations

    @property
    def task_names(self) -> list[str]:
        return [t.strip() for t in self.task.split(",") if t.strip()]


def get_tasks(cfg: RLConfig) -> list[Task]:
    """The run's tasks, in the order given; an unknown or repeated name is a TTScaleError."""
    names = cfg.task_names
    if not names:
        raise TTScaleError(f"task {cfg.task!r} names no task; accepted: arith, countdown, a .jsonl file, "
                           "or several separated by commas")
    if len(set(names)) != len(names):
        raise TTScaleError(f"task {cfg.task!r} names a task twice; accepted: each task once")
    return [get_task(n) for n in names]


class RLRunError(RuntimeError):
    """A run stopped before its end; the message names the last complete checkpoint."""


# -- start-up checks ---------------------------------------------------------------------------
def check_rl_config(cfg: RLConfig, tasks: Task | Sequence[Task], model_config: dict | None = None) -> None:
    """Reject a configuration that would fail or teach nothing, before any work starts."""
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    import trl

    if trl.__version__ != TRL_VERSION:
        raise TTScaleError(f"trl=={trl.__version__} is installed; accepted: trl=={TRL_VERSION} "
                           f"(pip install 'trl=={TRL_VERSION}')")
    if cfg.num_generations < 2:
        raise out_of_range("num_generations", cfg.num_generations,
                           ">= 2 (group-relative advantages need at least two samples per prompt)")
    if cfg.generation_batch_size < cfg.num_generations or cfg.generation_batch_size % cfg.num_generations:
        raise out_of_range("generation_batch_size", cfg.generation_batch_size,
                           f"a multiple of num_generations={cfg.num_generations} (whole groups per step)")
    for name, lo in (("steps", 1), ("num_iterations", 1), ("max_completion_length", 1),
                     ("save_steps", 1), ("num_train_problems", 1)):
        if int(getattr(cfg, name)) < lo:
            raise out_of_range(name, getattr(cfg, name), f">= {lo}")
    if not cfg.temperature > 0:
        raise out_of_range("temperature", cfg.temperature, "> 0 (GRPO needs diverse samples)")
    if not 0 < cfg.top_p <= 1:
        raise out_of_range("top_p", cfg.top_p, "in (0, 1]")
    for name in ("learning_rate", "epsilon"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) > 0):
            raise out_of_range(name, getattr(cfg, name), "a finite number > 0")
    if not (math.isfinite(cfg.beta) and cfg.beta >= 0):
        raise out_of_range("beta", cfg.beta, "a finite number >= 0")
    if cfg.loss_type not in LOSS_TYPES:
        raise unknown("loss_type", cfg.loss_type, LOSS_TYPES)
    if cfg.scale_rewards not in SCALE_REWARDS:
        raise unknown("scale_rewards", cfg.scale_rewards, SCALE_REWARDS)
    if cfg.rollout not in ROLLOUTS:
        raise unknown("rollout", cfg.rollout, ROLLOUTS)
    if cfg.resample_flat < 0 or (cfg.resample_flat and cfg.rollout != "engine"):
        raise out_of_range("resample_flat", cfg.resample_flat,
                           ">= 0, and 0 unless rollout='engine' (resampling happens in the engine rollout)")
    if cfg.effort not in EFFORTS:
        raise unknown("effort", cfg.effort, EFFORTS)
    if cfg.learn not in LEARN:
        raise unknown("learn", cfg.learn, LEARN)
    if cfg.learn == "mode" and (cfg.effort != "auto" or cfg.rollout != "engine"):
        raise TTScaleError(f"learn 'mode' trains the mode line of auto prompts with the engine rollout; got "
                           f"effort {cfg.effort!r}, rollout {cfg.rollout!r} (accepted: effort 'auto', rollout 'engine')")
    if cfg.effort != "low":
        for task in tasks:
            if task.name not in LONG_MODE_TASKS:
                raise TTScaleError(f"effort {cfg.effort!r} needs tasks with a long mode "
                                   f"({', '.join(LONG_MODE_TASKS)}); task {task.name!r} has only effort 'low'")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise TTScaleError(f"device {cfg.device!r} is not available here; accepted: cpu")
    for task in tasks:
        if isinstance(task, BuiltinTask):
            if not cfg.levels:
                raise TTScaleError(f"no levels given; accepted: some of {list(task.levels)}")
            for lv in cfg.levels:
                if lv not in task.levels:
                    raise unknown("level", lv, task.levels)
        cfg.rewards.check(task)
    if model_config:
        ctx = model_config.get("max_position_embeddings")
        longest = 1 + max((len(p.prompt) for t in tasks for p in _sample_prompts(t, cfg)), default=0)
        if ctx and longest + cfg.max_completion_length > ctx:
            raise out_of_range("max_completion_length", cfg.max_completion_length,
                               f"<= {ctx - longest} (the model's context is {ctx} tokens and prompts "
                               f"take up to {longest})")


def _sample_prompts(task: Task, cfg: RLConfig) -> list[Problem]:
    return [apply_effort(p, cfg.effort) for lv in (cfg.levels if isinstance(task, BuiltinTask) else [None])
            for p in task.problems(split="train", level=lv, n=8, seed=cfg.seed)]


def training_problems(tasks: Task | Sequence[Task], cfg: RLConfig) -> list[Problem]:
    """Distinct train-split problems, tasks and levels interleaved in a seeded random order.

    As many as the run may visit (steps x prompts per step, times 1 + resample_flat rounds), at
    most `num_train_problems`, split evenly over tasks and levels; the trainer cycles through
    them when the run needs more.
    """
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    cells = [(t, lv) for t in tasks for lv in (cfg.levels if isinstance(t, BuiltinTask) else [None])]
    total = min(cfg.num_train_problems, cfg.steps * cfg.prompts_per_step * (1 + cfg.resample_flat))
    per_cell = max(1, math.ceil(total / len(cells)))
    out: list[Problem] = []
    for task, lv in cells:
        try:
            out += task.problems(split="train", level=lv, n=per_cell, seed=cfg.seed)
        except TTScaleError:  # a small level has fewer distinct problems: take them all
            out += _as_many_as(task, lv, cfg.seed, per_cell // 2)
    random.Random(cfg.seed).shuffle(out)
    if cfg.effort != "low":
        out = [apply_effort(p, cfg.effort) for p in out]
    return out


def _as_many_as(task: Task, level: int | None, seed: int, n: int) -> list[Problem]:
    while n >= 1:
        try:
            return task.problems(split="train", level=level, n=n, seed=seed)
        except TTScaleError:
            n //= 2
    return []


# -- checkpoints -------------------------------------------------------------------------------
def last_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint in `out` (its trainer state is written last), or None."""
    out = Path(out)
    best: tuple[int, Path] | None = None
    for d in out.glob("checkpoint-*") if out.exists() else []:
        try:
            step = int(d.name.split("-")[1])
            json.loads((d / "trainer_state.json").read_text())
        except (ValueError, IndexError, OSError):
            continue
        if best is None or step > best[0]:
            best = (step, d)
    return best[1] if best else None


def _read_log(path: Path, upto: int | None) -> list[dict]:
    """Log records up to step `upto` (None: all); later ones belong to work the checkpoint lost."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if upto is None or r.get("step", 0) <= upto:
            rows.append(r)
    return rows


# -- the run -----------------------------------------------------------------------------------
def train_rl(cfg: RLConfig, model: str, out: str | Path, reward_funcs: Sequence[RewardFunc] | None = None,
             reward_weights: Sequence[float] | None = None, progress: bool = True,
             callbacks: Sequence | None = None) -> dict:
    """Run GRPO from `model` (a shipped name or a directory) and save the policy to `out`.

    Rewards come from the task oracle (`cfg.rewards`) unless `reward_funcs` (TRL-style
    callables) are given. If `out` holds a checkpoint, the run resumes from it. Returns the
    summary that is also written to `out/training.json` (with `parent`).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, PrinterCallback, TrainerCallback
    from trl import GRPOConfig

    out = Path(out)
    model_dir = resolve_model(model)
    tasks = get_tasks(cfg)
    model_config = json.loads((Path(model_dir) / "config.json").read_text())
    check_rl_config(cfg, tasks, model_config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)

    problems = training_problems(tasks, cfg)
    by_id = {p.id: p for p in problems}
    task_of = {p.task: t for t in tasks for p in _sample_prompts(t, cfg)}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if reward_funcs is None:
        funcs, weights = oracle_reward_funcs(task_of, by_id, cfg.rewards, eos_id=tokenizer.eos_token_id)
    else:
        funcs = [checked(f) for f in reward_funcs]
        weights = list(reward_weights) if reward_weights is not None else [1.0] * len(funcs)
        if len(weights) != len(funcs):
            raise TTScaleError(f"{len(weights)} reward weights for {len(funcs)} reward functions; "
                               "accepted: one weight per function")
    dataset = Dataset.from_list([{"prompt": p.prompt, "problem_id": p.id} for p in problems])
    funcs, weights = with_group_stats(funcs, weights)

    ckpt = last_checkpoint(out)
    log_path = out / "train_log.jsonl"
    history = _read_log(log_path, int(ckpt.name.split("-")[1]) if ckpt else 0)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0

    args = GRPOConfig(
        output_dir=str(out), max_steps=cfg.steps, per_device_train_batch_size=cfg.generation_batch_size,
        gradient_accumulation_steps=1, num_generations=cfg.num_generations,
        num_iterations=cfg.num_iterations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.warmup_steps, beta=cfg.beta,
        epsilon=cfg.epsilon, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
        reward_weights=list(weights), max_grad_norm=cfg.max_grad_norm, logging_steps=1,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2, report_to=[],
        disable_tqdm=True, seed=cfg.seed, data_seed=cfg.seed, use_cpu=cfg.device == "cpu",
        bf16=False, fp16=False, remove_unused_columns=False, log_completions=False,
        logging_nan_inf_filter=False, dataloader_num_workers=0,
    )
    policy = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rollout = None
    if cfg.rollout == "engine":
        from ttscale.train.rollout import EngineRollout

        rollout = EngineRollout(problems, task_of, max_tokens=cfg.max_completion_length,
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                resample_flat=cfg.resample_flat, mode_only=cfg.learn == "mode")

    class _Log(TrainerCallback):
        """One JSONL record per step, and the progress bar."""

        def __init__(self) -> None:
            self.bar = None
            self.t0 = time.time()

        def on_train_begin(self, args, state, control, **kw):
            self.bar = tqdm(total=cfg.steps, initial=state.global_step, disable=not progress,
                            desc=f"grpo {out.name}")

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or ("reward" not in logs and "loss" not in logs):
                return  # the end-of-training summary; every step's record has a loss
            rec = step_record(state.global_step, logs, elapsed_before + time.time() - self.t0)
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.bar is not None and rec["reward_mean"] is not None:  # None: reused samples
                self.bar.n = state.global_step
                self.bar.set_postfix(reward=f"{rec['reward_mean']:.3f}", acc=f"{rec['accuracy']:.2f}",
                                     len=f"{rec['mean_length']:.0f}", zero_std=f"{rec['frac_zero_std']:.2f}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    class _Finite(TrainerCallback):
        """Stop before a checkpoint could store non-finite weights (runs after every other callback)."""

        def on_step_end(self, args, state, control, model=None, **kw):
            if model is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
                raise FloatingPointError(f"non-finite weights after step {state.global_step}")

    trainer = None
    t0 = time.time()
    try:
        with warnings.catch_warnings():  # TRL calls transformers APIs deprecated for v6: noise only
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", "You are using 'rollout_func'")  # TRL marks it experimental
            trainer = _guarded_trainer_class()(
                model=policy, reward_funcs=funcs, args=args, train_dataset=dataset,
                processing_class=tokenizer, callbacks=[_Log(), *(callbacks or []), _Finite()],
                rollout_func=rollout)
            trainer.remove_callback(PrinterCallback)  # our own log and bar replace its printed dicts
            trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except BaseException as e:  # noqa: BLE001 - every failure is reported the same way, then re-raised
        kept = last_checkpoint(out)
        where = f"last good checkpoint kept at {kept}" if kept else "no checkpoint was written yet"
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        step = trainer.state.global_step if trainer is not None else 0
        raise RLRunError(f"RL run stopped at step {step} ({what}); {where}; "
                         "rerun the same command to resume") from e
    finally:
        if rollout is not None:
            rollout.close()

    wall = elapsed_before + time.time() - t0
    from ttscale.train.sft import save_model

    save_model(trainer.model, out)
    history = _read_log(log_path, None)
    summary = {
        "kind": "policy", "method": "grpo", "parent": Path(model_dir).name, "parent_path": str(model_dir),
        "config": asdict(cfg), "steps": trainer.state.global_step, "wall_s": round(wall, 1),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "completion_tokens": int(sum(r["mean_length"] * cfg.generation_batch_size for r in history
                                     if r.get("mean_length") is not None)),
        "first_steps": _mean_of(history[:10]), "last_steps": _mean_of(history[-10:]),
        "trl": TRL_VERSION, "torch": torch.__version__, "device": cfg.device,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    for d in out.glob("checkpoint-*"):
        shutil.rmtree(d, ignore_errors=True)
    return summary


def with_group_stats(funcs: Sequence[RewardFunc], weights: Sequence[float]
                     ) -> tuple[list[RewardFunc], list[float]]:
    """Add a weight-0 function that logs the share of groups whose total reward is flat.

    TRL's own `frac_reward_zero_std` compares the std it divides by, which is the batch std
    under `scale_rewards="batch"`; this one always looks at the groups (samples of one prompt).
    """
    last: dict[int, list[float]] = {}

    def recording(i: int, fn: RewardFunc) -> RewardFunc:
        def wrapper(**kw):
            last[i] = fn(**kw)
            return last[i]

        wrapper.__name__ = fn.__name__
        return wrapper

    def group_stats(prompts, completions, log_metric=None, problem_id=None, **_):
        total = [sum(w * last[i][j] for i, w in enumerate(weights)) for j in range(len(completions))]
        if log_metric is not None:  # a group is one problem (the engine rollout may replace prompts)
            log_metric("frac_zero_std_groups", zero_std_fraction(total, problem_id or prompts))
        return [0.0] * len(completions)

    return [*(recording(i, f) for i, f in enumerate(funcs)), group_stats], [*weights, 0.0]


def step_record(step: int, logs: dict, elapsed_s: float) -> dict:
    """The per-step log record, from TRL's metric names to ours."""
    rec = {
        "step": step, "reward_mean": logs.get("reward"), "reward_std": logs.get("reward_std"),
        "accuracy": logs.get("rewards/correctness/mean", float("nan")),
        # whole completions (the engine rollout's own count; TRL counts only the trained tokens)
        "mean_length": logs.get("gen_length", logs.get("completions/mean_length")),
        "trained_length": logs.get("completions/mean_length"), "frac_zero_std": logs.get("frac_zero_std_groups", logs.get("frac_reward_zero_std")),
        "kl": logs.get("kl"), "loss": logs.get("loss"), "lr": logs.get("learning_rate"),
        "clip_ratio": logs.get("clip_ratio/region_mean"), "entropy": logs.get("entropy"),
        "truncated": logs.get("completions/clipped_ratio"), "elapsed_s": round(elapsed_s, 2),
        "step_s": logs.get("step_time"), "generate_s": logs.get("time/generate"),
        "score_s": logs.get("time/score"), "frac_flat_sampled": logs.get("frac_flat_sampled"),
        "groups_sampled": logs.get("groups_sampled"),
    }
    for k, v in logs.items():
        if k.startswith(("frac_flat_sampled/", "frac_high/")):
            rec[k.replace("/", "_")] = v
    for k, v in logs.items():
        if k.startswith("rewards/") and k.endswith("/mean") and k != "rewards/group_stats/mean":
            rec["reward_" + k.split("/")[1]] = v
    return rec


def _mean_of(rows: list[dict]) -> dict:
    keys = ("reward_mean", "accuracy", "mean_length", "frac_zero_std", "kl")
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        out[k] = round(sum(vals) / len(vals), 4) if vals else None
    return out


def _guarded_trainer_class():
    from trl import GRPOTrainer

    class GuardedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that stops on a non-finite loss before the optimizer applies it."""

        def _generate(self, prompts):
            t = time.perf_counter()
            out = super()._generate(prompts)
            self._metrics["train"]["time/generate"].append(time.perf_counter() - t)
            return out

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            n = len(self._metrics["train"]["time/generate"])
            out = super()._generate_and_score_completions(inputs)
            gen = sum(self._metrics["train"]["time/generate"][n:])
            self._metrics["train"]["time/score"].append(time.perf_counter() - t - gen)
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not torch.isfinite(loss).all():
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.state.global_step + 1}")
            return loss

    return GuardedGRPOTrainer


# -- evaluation and the model card (shared with distillation) ----------------------------------
def evaluate_levels(model_dir: str | Path, task: str, levels: Sequence[int] | None = None,
                    split: str = "heldout", num_problems: int = 50, n: int = 16, seed: int = 0,
                    backend: str = "torch", effort: str = "low", device: str = "cpu") -> list:
    """Greedy, maj@n and pass@n per level on fixed problems of `split` asked at `effort`
    (EvalResult rows)."""
    from ttscale.engine import load_generator
    from ttscale.eval.evaluate import MAX_TOKENS, evaluate
    from ttscale.tasks.effort import max_tokens_for

    t = get_task(task)
    gen = load_generator(str(model_dir), backend=backend, device=device)
    lvls = list(levels) if levels else (list(t.levels) if isinstance(t, BuiltinTask) else [None])
    max_tokens = min(max_tokens_for(effort, MAX_TOKENS), gen.context_length)  # a short-context parent
    return [evaluate(gen, t, [apply_effort(p, effort) for p in t.problems(split=split, level=lv, n=num_problems,
                                                                           seed=seed)],
                     n=n, seed=seed, max_tokens=max_tokens)
            for lv in lvls]


def length_table(rows: Sequence) -> str:
    """Mean greedy solution length and tokens per correct greedy answer, per row."""
    lines = ["| task | level | mean tokens | tokens per correct answer |", "|---|---|---|---|"]
    for r in rows:
        per = r.mean_tokens / r.greedy_acc if r.greedy_acc > 0 else float("inf")
        lines.append(f"| {r.task} | {r.level} | {r.mean_tokens:.1f} | {per:.1f} |")
    return "\n".join(lines)


def write_trained_card(model_dir: str | Path, rows: Sequence, command: str, split: str,
                       seed: int = 0) -> Path:
    """README.md of an RL or distilled model: the family's card structure, with its parent.

    The rows are also stored in `eval.json`, as for the SFT models.
    """
    from ttscale.eval.evaluate import format_table

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "training.json").read_text())
    cfg = meta.get("config", {})
    method = {"grpo": "GRPO (RL from verifiable rewards, TRL GRPOTrainer)",
              "rest-em": "expert iteration (ReST-EM): search, keep verified solutions, fine-tune"}
    if meta.get("method") == "grpo":
        r = cfg.get("rewards", {})
        data = (f"{cfg.get('task')} levels {cfg.get('levels')}, train split; {cfg.get('num_generations')} "
                f"samples per prompt, {cfg.get('generation_batch_size')} per step; reward weights: "
                f"correct {r.get('correct')}, format {r.get('format')}, partial credit {r.get('partial')}, "
                f"length penalty {r.get('length_penalty')}; beta {cfg.get('beta')}")
        steps = f"{meta.get('steps')} GRPO steps ({meta.get('completion_tokens', 0):,} completion tokens sampled)"
    else:
        data = (f"{cfg.get('task')} levels {cfg.get('levels')}, train split, effort {cfg.get('effort', 'low')}; "
                f"solutions found by {cfg.get('strategy')} with the {cfg.get('scorer')} scorer, kept only when "
                f"the oracle verifies them")
        steps = f"{meta.get('rounds_done')} rounds of {cfg.get('sft_steps')} fine-tuning steps"
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [ttscale]", "---",
        f"# {model_dir.name}", "",
        f"A small Llama-architecture decoder of the ttscale embedded family "
        f"({meta.get('params', 0):,} parameters), character-level tokenizer, trained from "
        f"`{meta.get('parent')}` by {method.get(meta.get('method'), meta.get('method'))}.", "",
        "## Training", "",
        f"- parent: {meta.get('parent')}",
        *[f"- stage {i} (before this one): `{c}`" for i, c in enumerate(meta.get("stages", []), 1)],
        f"- command: `{command}`",
        f"- data: {data}",
        f"- steps: {steps}",
        f"- wall time: {meta.get('wall_s', 0) / 60:.1f} min on {meta.get('device', '?')} "
        f"(torch {meta.get('torch', '?')})", "",
        "## Accuracy", "",
        f"{split.capitalize()} split, fixed problems (seed {seed}). Greedy decoding; maj@n and pass@n from "
        f"n samples at temperature 1.0. Reproduce with `ttscale eval --model {model_dir} "
        + "".join(f"--task {t} " for t in str(cfg.get("task", "")).split(",") if t)
        + (f"--effort {rows[0].effort} " if rows and rows[0].effort != "low" else "")
        + f"--split {split} --seed {seed} "
        f"--n {rows[0].n if rows else 16} --num-problems {rows[0].num_problems if rows else 0}`.", "",
        format_table(list(rows)), "", "Greedy solution length:", "", length_table(rows), "",
    ]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    (model_dir / "eval.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    meta["command"] = command
    (model_dir / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path
