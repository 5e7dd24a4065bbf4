"""Train a process (or outcome) reward model from the policies' own samples, labelled automatically.

1. Sample `samples` solutions per training problem from each sampling policy, at each
   temperature and effort of the config.
2. Label each step. `labels="oracle"` (built-in tasks): the exact step verdict of
   `task.check_steps`, no rollouts, so tens of thousands of solutions are cheap.
   `labels="mc"`, Math-Shepherd-style: from the partial solution ending at that step, roll out
   `rollouts` completions; the step's soft label is the fraction that reach the right answer
   (hard label: 1 if any does); a step that states the final answer is labelled by the task's
   check directly. An ORM needs neither: its one label is whether the solution is right.
3. Train a `LlamaForTokenClassification` (one label) on those labels with binary cross-entropy
   read at each step's delimiter token; the backbone starts from the policy's weights or from
   scratch.
4. Evaluate on held-out problems (a greedy answer and `heldout_samples` samples each): the
   within-problem AUROC (a right against a wrong sample of the same problem; also at the first
   step and at the step of the first error) and best-of-n against greedy, the primary figures
   (`eval.verifier_quality`); beside them step-label accuracy and ProcessBench-style F1 against
   the oracle step checker (`task.check_steps`).
5. Save in Hugging Face format with a model card.
"""
from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaForTokenClassification

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError, out_of_range, unknown
from ttscale.models.family import SIZES
from ttscale.rewards.prm import (KINDS, LearnedPRM, encode_for_reward, forward_logits,
                                 load_reward_model)
from ttscale.rewards.lm_check import FEATURES, LMStepChecker, check_features, fit_head
from ttscale.rewards.quality import first_wrong
from ttscale.tasks import BUILTIN_TASKS, LEVELS, get_task
from ttscale.tasks.base import Task
from ttscale.types import GenerationRequest, Problem, SamplingParams

LABELS = ("soft", "hard")
LABEL_SOURCES = ("oracle", "mc")  # exact step checks, or Math-Shepherd Monte Carlo rollouts
INITS = ("policy", "scratch")
READERS = ("head", "lm-check")  # a trained token-classification head, or a checking LM's gaps


@dataclass
class PRMConfig:
    """Settings of one reward-model run; every field is recorded in the model card."""

    policy: str = "ttscale-small"  # backbone, tokenizer and held-out samples (name or directory)
    sample_policies: list[str] = field(default_factory=list)  # whose samples train it; [] = [policy]
    tasks: list[str] = field(default_factory=lambda: ["arith", "countdown"])
    levels: list[int] = field(default_factory=lambda: [2, 3, 4])
    kind: str = "prm"  # "prm": a label per step; "orm": one label per solution
    problems: int = 16  # training problems per (task, level)
    samples: int = 4  # solutions sampled per problem
    rollouts: int = 4  # Math-Shepherd rollouts per step (k)
    label: str = "soft"  # "soft": fraction of rollouts right; "hard": 1 if any is right
    labels: str = "oracle"  # "oracle": task.check_steps; "mc": Math-Shepherd rollouts
    heldout_problems: int = 8  # held-out problems per (task, level) for the card's metrics
    heldout_samples: int = 16  # samples per held-out problem (within-problem AUROC, best-of-n)
    temperature: float = 1.0  # sampling temperature of rollouts and held-out samples
    temperatures: list[float] = field(default_factory=list)  # of training samples; [] = [temperature]
    efforts: list[str] = field(default_factory=lambda: ["low"])  # efforts of training samples
    max_tokens: int = 128
    reader: str = "head"  # "head": train a token classifier; "lm-check": rewards.lm_check
    checker: str | None = None  # with reader="lm-check": the LM that checks (default: policy)
    head_features: list[str] = field(default_factory=list)  # lm-check head's inputs; [] = all
    init: str = "policy"  # backbone: "policy" weights or "scratch"
    size: str | None = None  # with init="scratch": a family size (default: the policy's shape)
    steps: int = 150  # optimizer steps
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown("reward model kind", self.kind, KINDS)
        if self.label not in LABELS:
            raise unknown("label", self.label, LABELS)
        if self.labels not in LABEL_SOURCES:
            raise unknown("labels", self.labels, LABEL_SOURCES)
        from ttscale.tasks.effort import check_effort

        for e in self.efforts:
            check_effort(e)
        for t in self.temperatures:
            if not 0 < t <= 5:
                raise out_of_range("temperature", t, "0 < temperature <= 5")
        if self.init not in INITS:
            raise unknown("init", self.init, INITS)
        if self.reader not in READERS:
            raise unknown("reader", self.reader, READERS)
        if self.reader == "lm-check" and self.kind != "prm":
            raise TTScaleError(f"reader 'lm-check' scores steps, so it makes a prm, not a "
                               f"{self.kind}; accepted: --kind prm, or --reader head")
        if self.head_features:
            check_features(self.head_features)
        if self.size is not None and self.size not in SIZES:
            raise unknown("model size", self.size, SIZES)
        for t in self.tasks:
            if t not in BUILTIN_TASKS:
                raise unknown("task (a step oracle is needed for the card)", t, BUILTIN_TASKS)
        for lv in self.levels:
            if lv not in LEVELS:
                raise unknown("level", lv, LEVELS)
        for name in ("problems", "samples", "rollouts", "heldout_problems", "heldout_samples",
                     "max_tokens", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise out_of_range(name, v, "an integer >= 1")
        if not 0 < self.temperature <= 5:
            raise out_of_range("temperature", self.temperature, "0 < temperature <= 5")
        if not self.lr > 0:
            raise out_of_range("lr", self.lr, "a number > 0")


@dataclass
class LabelledSolution:
    """One sampled solution with a training label per step and the oracle's verdict per step."""

    problem: Problem
    text: str
    steps: list[str]
    labels: list[float]  # the training targets (per step for a PRM; one for an ORM)
    oracle: list[bool]  # task.check_steps, for evaluation and label-quality statistics
    correct: bool


# -- labels ------------------------------------------------------------------------------------

def math_shepherd_label(rollouts_correct: Sequence[bool], hard: bool = False) -> float:
    """A step's label from whether each rollout after it reached the right answer."""
    if not rollouts_correct:
        raise TTScaleError("a Math-Shepherd label needs at least one rollout")
    if hard:
        return 1.0 if any(rollouts_correct) else 0.0
    return sum(1 for c in rollouts_correct if c) / len(rollouts_correct)


def _prefix(steps: Sequence[str], i: int, delimiter: str) -> str:
    return "".join(s + delimiter for s in steps[: i + 1])


def _sampling(cfg: PRMConfig, n: int, seed: int, temperature: float | None = None) -> SamplingParams:
    return SamplingParams(n=n, temperature=cfg.temperature if temperature is None else temperature,
                          max_tokens=cfg.max_tokens, seed=seed)


def sample_solutions(generator: Generator, task: Task, problems: Sequence[Problem], cfg: PRMConfig,
                     seed: int, temperature: float | None = None) -> list[tuple[Problem, str]]:
    """`cfg.samples` solutions per problem, in one generator call."""
    reqs = [GenerationRequest(p.prompt, _sampling(cfg, cfg.samples, seed * 100_003 + i, temperature))
            for i, p in enumerate(problems)]
    out = []
    for p, r in zip(problems, generator.generate(reqs)):
        if r.error:
            continue
        out += [(p, c.text) for c in r.completions]
    return out


def label_solutions(generator: Generator | None, task: Task, samples: Sequence[tuple[Problem, str]],
                    cfg: PRMConfig, seed: int, rollouts: bool = True) -> list[LabelledSolution]:
    """Step labels for each sample: the oracle's verdicts (`cfg.labels="oracle"`) or
    Math-Shepherd rollouts (all steps in one generator call; only then is `generator` used)."""
    delim = task.step_delimiter
    items = []
    reqs: list[GenerationRequest] = []
    where: list[tuple[int, int]] = []  # (sample, step) of each rollout request
    for si, (p, text) in enumerate(samples):
        steps = task.split_steps(text)
        labels: list[float | None] = [None] * len(steps)
        for i in range(len(steps)):
            prefix = _prefix(steps, i, delim)
            if steps[i].strip().startswith("A:"):
                labels[i] = 1.0 if task.is_correct(p, prefix) else 0.0
            elif rollouts and cfg.kind == "prm" and cfg.labels == "mc":
                reqs.append(GenerationRequest(p.prompt + prefix,
                                              _sampling(cfg, cfg.rollouts, seed * 100_003 + len(reqs))))
                where.append((si, i))
        items.append((p, text, steps, labels))
    if reqs and generator is None:
        raise TTScaleError("Math-Shepherd labels need the policy to roll out from each step; "
                           "pass its generator, or use labels='oracle'")
    results = generator.generate(reqs) if reqs and generator is not None else []
    for (si, i), r in zip(where, results):
        p, _, steps, labels = items[si]
        prefix = _prefix(steps, i, delim)
        correct = [task.is_correct(p, prefix + c.text) for c in r.completions] if not r.error else [False]
        labels[i] = math_shepherd_label(correct or [False], hard=cfg.label == "hard")
    out = []
    for p, text, steps, labels in items:
        if not steps:
            continue
        ok = task.is_correct(p, text)
        oracle = task.check_steps(p, steps)
        if cfg.kind == "orm":
            final = [1.0 if ok else 0.0]
        elif cfg.labels == "oracle":
            final = [1.0 if v else 0.0 for v in oracle]
        else:
            final = [0.0 if lab is None else lab for lab in labels]
        out.append(LabelledSolution(p, text, steps, final, oracle, ok))
    return out


def collect(generator: Generator, cfg: PRMConfig, split: str, n_problems: int, seed: int,
            rollouts: bool, temperature: float | None = None, effort: str = "low") -> list[LabelledSolution]:
    """Sample and label solutions for every (task, level) of the config."""
    from ttscale.tasks.effort import apply_effort

    out: list[LabelledSolution] = []
    for t in cfg.tasks:
        task = get_task(t)
        for lv in cfg.levels:
            problems = [apply_effort(p, effort) for p in task.problems(split, lv, n_problems, seed=cfg.seed)]
            samples = sample_solutions(generator, task, problems, cfg, seed + lv, temperature)
            out += label_solutions(generator, task, samples, cfg, seed + 7 * lv, rollouts)
    return out


def collect_training(cfg: PRMConfig, policy_dir: str, generator: Generator | None = None
                     ) -> list[LabelledSolution]:
    """Training solutions from every sampling policy x temperature x effort of the config.

    `generator`, when given, stands in for `policy` (the first sampling policy by default).
    """
    from ttscale.engine import load_generator
    from ttscale.models.registry import resolve_model

    out: list[LabelledSolution] = []
    names = cfg.sample_policies or [cfg.policy]
    for k, name in enumerate(names):
        path = resolve_model(name)
        gen = generator if generator is not None and path == policy_dir else load_generator(path)
        for j, temp in enumerate(cfg.temperatures or [cfg.temperature]):
            for e, effort in enumerate(cfg.efforts):
                seed = cfg.seed * 1000 + 1 + 10_000 * (k * 100 + j * 10 + e)
                out += collect(gen, cfg, "train", cfg.problems, seed, rollouts=True,
                               temperature=temp, effort=effort)
    return out


# -- model and training ----------------------------------------------------------------------

def build_model(cfg: PRMConfig, policy_dir: str) -> LlamaForTokenClassification:
    torch.manual_seed(cfg.seed)
    if cfg.init == "policy":
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new head and the unused LM head are expected
        try:
            return LlamaForTokenClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(level)
    if cfg.size:
        config = SIZES[cfg.size].config()
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(policy_dir)
    config.num_labels = 1
    return LlamaForTokenClassification(config)


def _examples(tokenizer: Any, data: Sequence[LabelledSolution], kind: str, max_len: int,
              delimiter: str) -> list[tuple[list[int], list[int], list[float]]]:
    out = []
    for d in data:
        ids, pos = encode_for_reward(tokenizer, d.problem.prompt, d.text, delimiter, max_len)
        if not pos:
            continue
        if kind == "orm":
            out.append((ids, [pos[-1]], d.labels))
        else:
            n = min(len(pos), len(d.labels))
            out.append((ids, pos[:n], d.labels[:n]))
    return out


def train_reward_model(model: LlamaForTokenClassification, examples: Sequence[tuple[list[int], list[int], list[float]]],
                       cfg: PRMConfig, pad_id: int = 0) -> list[float]:
    """Binary cross-entropy at the labelled positions; returns the loss of every step."""
    if not examples:
        raise TTScaleError("no labelled solutions to train on; raise --problems or --samples")
    device = torch.device(cfg.device)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    warmup = max(1, cfg.steps // 10)
    losses = []
    order: list[int] = []  # a shuffled pass over the examples, refilled when used up
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = []
        for _ in range(min(cfg.batch_size, len(examples))):
            if not order:
                order.extend(rng.sample(range(len(examples)), len(examples)))
            batch.append(examples[order.pop()])
        logits = forward_logits(model, [b[0] for b in batch], pad_id, device, grad=True)
        rows = torch.tensor([i for i, b in enumerate(batch) for _ in b[1]], device=device)
        cols = torch.tensor([p for b in batch for p in b[1]], device=device)
        target = torch.tensor([y for b in batch for y in b[2]], device=device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[rows, cols], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def fit_lm_check(cfg: PRMConfig, data: Sequence[LabelledSolution], delimiter: str,
                 meta: dict[str, Any]) -> tuple[torch.nn.Module, Any, list[float]]:
    """A checking LM (`cfg.checker`, default the policy) with a logistic head fitted on the
    features of every step up to and including the first wrong one (`rewards.lm_check`): the head
    learns to spot the step where an error happens; later steps, written after it, are left to
    the aggregate. Returns the LM (its config carrying the head), its tokenizer and the loss."""
    from ttscale.models.registry import resolve_model

    name = cfg.checker or cfg.policy
    checker = LMStepChecker(str(resolve_model(name)), delimiter=delimiter, device=cfg.device)
    feats, _ = checker.features([d.problem.prompt for d in data], [d.text for d in data])
    rows, labels = [], []
    for d, f in zip(data, feats):
        n = min(len(f.rows), len(d.oracle))
        stop = first_wrong(d.oracle[:n])
        for i in range(n if stop < 0 else stop + 1):
            rows.append(f.rows[i])
            labels.append(1.0 if d.oracle[i] else 0.0)
    head, loss = fit_head(rows, labels, features=cfg.head_features or FEATURES)
    checker.lm.config.ttscale = {**meta, "reader": "lm-check", "checker": Path(str(name)).name,
                                 "lm_check_head": head, "head_steps": len(rows),
                                 "head": "sigmoid of a logistic head on the checking LM's gaps "
                                 "between each token written and its own choice (rewards.lm_check)"}
    return checker.lm.cpu(), checker.tokenizer, [loss]


# -- evaluation ------------------------------------------------------------------------------

def processbench_f1(pred: Sequence[int], gold: Sequence[int]) -> dict[str, float]:
    """ProcessBench: accuracy at the first wrong step on erroneous samples, at saying "none" on
    correct ones, and their harmonic mean."""
    err = [p == g for p, g in zip(pred, gold) if g != -1]
    cor = [p == -1 for p, g in zip(pred, gold) if g == -1]
    a = sum(err) / len(err) if err else float("nan")
    b = sum(cor) / len(cor) if cor else float("nan")
    f1 = 2 * a * b / (a + b) if err and cor and a + b > 0 else (0.0 if err and cor else float("nan"))
    return {"error_acc": a, "correct_acc": b, "f1": f1, "n_erroneous": len(err), "n_correct": len(cor)}


def evaluate_reward_model(scorer: LearnedPRM, data: Sequence[LabelledSolution],
                          threshold: float = 0.5) -> dict[str, float]:
    """Step-label accuracy and ProcessBench F1 against the oracle, plus outcome accuracy."""
    steps, _ = scorer.step_scores([d.problem.prompt for d in data], [d.text for d in data])
    hits = total = outcome_hits = 0
    pred_first, gold_first = [], []
    for d, s in zip(data, steps):
        n = min(len(s), len(d.oracle))
        hits += sum((s[i] >= threshold) == d.oracle[i] for i in range(n))
        total += n
        pred_first.append(first_wrong([x >= threshold for x in s[:n]]))
        gold_first.append(first_wrong(d.oracle[:n]))
        outcome_hits += ((s[-1] if s else 0.0) >= threshold) == d.correct
    pb = processbench_f1(pred_first, gold_first)
    return {"step_accuracy": hits / total if total else float("nan"),
            "outcome_accuracy": outcome_hits / len(data) if data else float("nan"),
            "processbench_f1": pb["f1"], "first_error_accuracy": pb["error_acc"],
            "no_error_accuracy": pb["correct_acc"], "heldout_samples": len(data),
            "heldout_steps": total, "heldout_erroneous": pb["n_erroneous"]}


def label_statistics(data: Sequence[LabelledSolution], kind: str) -> dict[str, float]:
    """How the automatic labels compare with the oracle on the training samples."""
    agree = n = 0
    positive = 0.0
    for d in data:
        gold = [d.correct] if kind == "orm" else d.oracle
        for lab, g in zip(d.labels, gold):
            agree += (lab >= 0.5) == g
            positive += lab
            n += 1
    return {"train_samples": len(data), "train_labels": n,
            "label_mean": positive / n if n else float("nan"),
            "label_oracle_agreement": agree / n if n else float("nan"),
            "train_solutions_correct": sum(d.correct for d in data) / len(data) if data else float("nan")}


def draw_heldout(generator: Generator, cfg: PRMConfig) -> dict[tuple[str, int, str], list]:
    """A greedy answer and `heldout_samples` samples (at `temperature`) for each held-out
    problem, per (task, level, effort): the data of the card's within-problem figures."""
    from ttscale.eval.verifier_quality import draw_samples
    from ttscale.tasks.effort import apply_effort

    out = {}
    for t in cfg.tasks:
        task = get_task(t)
        for lv in cfg.levels:
            for effort in cfg.efforts:
                problems = [apply_effort(p, effort) for p in
                            task.problems("heldout", lv, cfg.heldout_problems, seed=cfg.seed)]
                out[(t, lv, effort)] = draw_samples(generator, problems, cfg.heldout_samples,
                                                    cfg.temperature, cfg.max_tokens, seed=cfg.seed + lv)
    return out


def heldout_as_labelled(draws: Sequence[Any], cfg: PRMConfig) -> list[LabelledSolution]:
    """The held-out samples with the oracle's verdicts (for step accuracy and ProcessBench F1)."""
    out: list[LabelledSolution] = []
    for d in draws:
        task = get_task(d.problem.task)
        out += label_solutions(None, task, [(d.problem, t) for t in d.samples], cfg, 0, rollouts=False)
    return out


def heldout_quality(scorer: LearnedPRM, draws: dict[tuple[str, int, str], list]) -> list[dict[str, Any]]:
    """Within-problem AUROC and best-of-n against greedy per (task, level, effort)."""
    from ttscale.eval.verifier_quality import verifier_quality

    rows = []
    for (t, lv, effort), data in draws.items():
        r = verifier_quality(get_task(t), data, scorer)
        rows.append({"task": t, "level": lv, "effort": effort, "problems": r["problems"], "n": r["n"],
                     "within_problem_auroc": r["within_problem_auroc"]["auroc"],
                     "mixed_problems": r["within_problem_auroc"]["groups"],
                     "pairs": r["within_problem_auroc"]["pairs"],
                     "auroc_first_step": r["step_auroc_first_step"]["auroc"],
                     "auroc_first_error": r["step_auroc_first_error"]["auroc"],
                     "greedy_acc": r["greedy_acc"], "best_of_n_acc": r["best_of_n_acc"],
                     "pooled_auroc": r["pooled_auroc"], "processbench_f1": r["processbench_f1"]})
    return rows


def quality_by_task(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Within-problem AUROC per (task, effort) over all levels' held-out problems: every (right,
    wrong) pair of the same problem counts once, as within one level (so it is the pair-weighted
    mean of the levels' figures)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for q in rows:
        pairs = q.get("pairs", 0)
        if not pairs or math.isnan(q["within_problem_auroc"]):
            continue
        o = out.setdefault((q["task"], q["effort"]), {"task": q["task"], "effort": q["effort"],
                                                      "wins": 0.0, "pairs": 0, "mixed_problems": 0})
        o["wins"] += q["within_problem_auroc"] * pairs
        o["pairs"] += pairs
        o["mixed_problems"] += q["mixed_problems"]
    return [{"task": o["task"], "effort": o["effort"], "within_problem_auroc": o["wins"] / o["pairs"],
             "mixed_problems": o["mixed_problems"], "pairs": o["pairs"]} for o in out.values()]


# -- the whole run ---------------------------------------------------------------------------

def train_prm(cfg: PRMConfig, out: str | Path, generator: Generator | None = None,
              command: str | None = None) -> dict:
    """Sample, label, train, evaluate and save a reward model to `out`; returns the summary."""
    from ttscale.models.registry import resolve_model

    t0 = time.time()
    out = Path(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    policy_dir = resolve_model(cfg.policy)
    if generator is None:
        from ttscale.engine import load_generator

        generator = load_generator(policy_dir)
    train = collect_training(cfg, policy_dir, generator)
    heldout_draws = draw_heldout(generator, cfg)
    heldout = [d for draws in heldout_draws.values() for d in heldout_as_labelled(draws, cfg)]
    t_label = time.time() - t0
    delimiter = get_task(cfg.tasks[0]).step_delimiter
    meta = {"kind": cfg.kind, "step_delimiter": delimiter, "policy": Path(policy_dir).name,
            "tasks": cfg.tasks, "levels": cfg.levels, "label": cfg.label, "rollouts": cfg.rollouts}
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.time()
    if cfg.reader == "lm-check":
        model, tokenizer, losses = fit_lm_check(cfg, train, delimiter, meta)
    else:
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        model = build_model(cfg, policy_dir)
        max_len = int(model.config.max_position_embeddings)
        examples = _examples(tokenizer, train, cfg.kind, max_len, delimiter)
        losses = train_reward_model(model, examples, cfg, pad_id=tokenizer.pad_token_id or 0)
        model.config.ttscale = {**meta, "head": "sigmoid of the one-label token-classification "
                                "logit at each step's delimiter token"}
    t_train = time.time() - t1
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    scorer = load_reward_model(out, kind=cfg.kind)
    metrics = evaluate_reward_model(scorer, heldout)
    by_task = {t: evaluate_reward_model(scorer, [d for d in heldout if d.problem.task == t])
               for t in cfg.tasks}
    quality = heldout_quality(scorer, heldout_draws)
    k = max(1, min(20, len(losses) // 10))
    summary = {"kind": cfg.kind, "parent": Path(policy_dir).name, "config": asdict(cfg),
               "params": sum(p.numel() for p in model.parameters()),
               "labels": label_statistics(train, cfg.kind), "quality": quality,
               "quality_by_task": quality_by_task(quality),
               "metrics": metrics, "metrics_by_task": by_task,
               "initial_loss": sum(losses[:k]) / k, "final_loss": sum(losses[-k:]) / k,
               "label_wall_s": round(t_label, 1), "train_wall_s": round(t_train, 1),
               "wall_s": round(time.time() - t0, 1), "command": command, "torch": torch.__version__}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "train_log.jsonl", "w") as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({"step": i + 1, "loss": loss}) + "\n")
    (out / "README.md").write_text(model_card(out.name, summary))
    return summary


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) and not math.isnan(x) else ("n/a" if isinstance(x, float) else str(x))


def model_card(name: str, s: dict) -> str:
    """A Hugging Face model card: what the model is, how it was made, how well it does."""
    c, m, lab = s["config"], s["metrics"], s["labels"]
    what = ("a process reward model: one score per step, the probability that the solution is "
            "still on a path to the right answer" if s["kind"] == "prm" else
            "an outcome reward model: the score at the last step is the probability that the "
            "solution's final answer is right")
    if s["kind"] == "orm":
        label_how = "whether the sampled solution's final answer is right"
    elif c.get("labels", "mc") == "oracle":
        label_how = "the exact step verdicts of the task's step oracle (`task.check_steps`), no rollouts"
    else:
        label_how = (f"Math-Shepherd-style: {c['rollouts']} rollouts from after each step, label = "
                     + ("fraction of rollouts that reach the right answer (soft)" if c["label"] == "soft"
                        else "1 if any rollout reaches the right answer (hard)")
                     + "; a step stating the final answer is labelled by the task's exact check")
    if c.get("reader") == "lm-check":
        arch = (f"It is a causal LM, {c.get('checker') or s['parent']} ({s['params']:,} "
                "parameters), that checks each step by predicting it (`--reader lm-check`, "
                "`ttscale.rewards.lm_check`): at every token, the gap between the logprob of the "
                "token written and of its own choice; a logistic head on each step's "
                f"{', '.join(c.get('head_features') or FEATURES)}"
                ", fitted on the step labels below, gives the step score, and the score after "
                "step k is the smallest so far.")
        fit = (f"logistic head fitted (L-BFGS) on the steps up to each solution's first wrong "
               f"one; cross-entropy {s['final_loss']:.4f}")
        pipeline = "text-generation"
        limits = ("It checks a step by writing it: it judges chains in the notation its checking "
                  "LM was trained on (countdown's older leaf notation is rewritten to today's "
                  "first), and only steps small enough for that LM to compute again (the long "
                  "mode's; a short-mode step packs a whole multiplication into one line). Its "
                  "scores on other tasks are not measured.")
    else:
        arch = (f"It is a `LlamaForTokenClassification` with one label ({s['params']:,} "
                "parameters); read sigmoid(logit) at the newline that ends each step.")
        start = "the policy's weights" if c["init"] == "policy" else "scratch"
        fit = (f"backbone initialised from {start}; "
               f"{c['steps']} AdamW steps, batch {c['batch_size']}, lr {c['lr']}; BCE loss "
               f"{s['initial_loss']:.4f} -> {s['final_loss']:.4f}")
        pipeline = "token-classification"
        limits = ("Trained only on the synthetic tasks above and on one policy's mistakes; its "
                  "scores on other policies or tasks are not measured. Labels from a few "
                  "rollouts are noisy (see the agreement above), and a weak policy labels good "
                  "steps as bad when it fails to finish them.")
    policies = ", ".join(c.get("sample_policies") or [s["parent"]])
    temps = ", ".join(str(t) for t in (c.get("temperatures") or [c["temperature"]]))
    quality = s.get("quality", [])
    qrows = "\n".join(f"| {q['task']} | {q['level']} | {q['effort']} | {_fmt(q['within_problem_auroc'])} "
                      f"({q['mixed_problems']}) | {_fmt(q['auroc_first_step'])} | {_fmt(q['auroc_first_error'])} "
                      f"| {_fmt(q['greedy_acc'])} | {_fmt(q['best_of_n_acc'])} | {_fmt(q['pooled_auroc'])} "
                      f"| {_fmt(q['processbench_f1'])} |" for q in quality)
    trows = "\n".join(f"| {q['task']} | {q['effort']} | {_fmt(q['within_problem_auroc'])} "
                      f"({q['mixed_problems']}, {q['pairs']} pairs) |"
                      for q in s.get("quality_by_task", []))
    by_task = s.get("metrics_by_task", {})
    head = "| metric | all |" + "".join(f" {t} |" for t in by_task)
    rule = "|---|---|" + "---|" * len(by_task)
    rows = "\n".join([head, rule] + [f"| {k} | {_fmt(v)} |" + "".join(f" {_fmt(by_task[t].get(k))} |" for t in by_task)
                                      for k, v in m.items()])
    lrows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in lab.items())
    return f"""---
library_name: transformers
pipeline_tag: {pipeline}
tags: [ttscale, reward-model, {s['kind']}]
---
# {name}

{name} is {what}. {arch}
It scores solutions sampled from **{s['parent']}** on the built-in tasks
{', '.join(c['tasks'])} (levels {', '.join(map(str, c['levels']))}).

## Use

```python
from ttscale.rewards.prm import load_reward_model
prm = load_reward_model("{name}", aggregate="min")   # or "last", "prod", "mean"
prm.score(problem, ["=3+8-5\\n=11-5\\n=6\\nA: 6\\n"]).scores[0].steps
```
or `ttscale solve ... --scorer {s['kind']}`.

## Training

- samples: {c['samples']} solutions per problem from each of {policies} at temperature {temps},
  effort {', '.join(c.get('efforts', ['low']))}; {c['problems']} train-split problems per (task, level);
  {lab['train_samples']} solutions in all
- labels: {label_how}
- {fit}
- time: labelling {s['label_wall_s']} s, training {s['train_wall_s']} s
- command: `{s.get('command') or 'ttscale.train.prm.train_prm(PRMConfig(...))'}`

Automatic labels against the oracle on the training samples:

| statistic | value |
|---|---|
{lrows}

## Evaluation

**Within problems** (the figure that matters for selection): on held-out problems, a greedy
answer and {c.get('heldout_samples', 16)} samples at temperature {c['temperature']} from {s['parent']} each.
Within-problem AUROC: over problems with both right and wrong samples (their count in
brackets), the probability that a right sample outscores a wrong one of the same problem (ties
1/2; a verifier that reads only difficulty gets 0.5); also at the first step, and at the step where
a sample's first error happens (against samples right at that step). Best-of-n picks the
highest-scored sample. Pooled AUROC and ProcessBench F1 are beside them only: they reward
reading difficulty.

| task | level | effort | within-problem AUROC | first step | first error | greedy | best-of-n | pooled AUROC | ProcessBench F1 |
|---|---|---|---|---|---|---|---|---|---|
{qrows}

Per task, all levels' held-out problems together (every right-wrong pair of one problem counts
once):

| task | effort | within-problem AUROC (problems, pairs) |
|---|---|---|
{trows}

**Pooled**, on {m['heldout_samples']} of those samples, against the
exact step checker of each task (`task.check_steps`), with threshold 0.5:
step-label accuracy, and ProcessBench-style F1 (harmonic mean of the accuracy at locating the
first wrong step on erroneous solutions and of saying "no error" on correct ones).

{rows}

## Limits

{limits}
"""
