"""GRPO rollouts with the project's own engine, as a TRL `rollout_func`.

TRL's default rollout calls transformers' `generate` on the padded batch: every sample of a
group re-reads its prompt and decodes until the longest row ends. `EngineRollout` generates
with `TorchEngine` instead: one prefill per distinct prompt shared by its group, rows that end
leave the batch. Before the first rollout of each optimizer step the policy's current weights
are written to a scratch directory (safetensors, about 4 MB for ttscale-small) and a fresh
engine is loaded from it, so samples always come from the policy being trained (on-policy).

Dynamic sampling (DAPO, arXiv:2503.14476): a group whose samples are all right or all wrong has
zero advantage and teaches nothing. With `resample_flat` > 0, such groups are replaced by
groups of fresh training problems (up to that many extra rounds per step); the replacement's
`problem_id` goes to the reward functions with the batch. Replacements follow a curriculum:
each (task, level) cell keeps a running share of informative groups (EMA, weight 0.1 per new
group) and a replacement's cell is drawn with probability proportional to that share plus 0.05,
so training drifts to the levels the policy sometimes but not always solves. The share of flat groups among all
groups sampled is logged as `frac_flat_sampled`, per level as `frac_flat_sampled/L<level>`, and
the number of groups sampled in the step as `groups_sampled`.

Effort chosen by the policy (`effort="auto"`): the prompts leave the mode to the model
(`Auto: <question>`, tasks/effort.py), so each completion's first line, `low` or `high`, is the
policy's choice made after reading the question, and the chain of that mode follows. The rewards
do not depend on the mode, so GRPO compares the modes inside each group by what they earn. The
share of long-mode samples is logged per task and level (`frac_high/<task>/L<level>`).

With `mode_only`, only the mode line is trained (TRL's `env_mask` is 1 on the completion's first
line, 0 on the chain): GRPO learns when each mode pays and no chain token is trained. The chains
still change through the weights they share with the mode line, and with Adam that drift grows
with the mode's shift (measured in docs/results.md: the chains lost 20-55 points). The mean
length of the whole completions is logged as `gen_length`, since TRL's own length counts only
the trained tokens.
"""
from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ttscale.tasks import Task
from ttscale.tasks.effort import AUTO_PREFIX, chosen_mode
from ttscale.types import GenerationRequest, Problem, SamplingParams


class EngineRollout:
    """A TRL rollout function over `TorchEngine`; call it as `rollout(prompts, trainer)`.

    problems: the training problems (the dataset's `problem_id` column keys them).
    tasks: task name -> Task, to check a sample's answer for dynamic sampling.
    """

    def __init__(self, problems: Sequence[Problem], tasks: Mapping[str, Task], *, max_tokens: int,
                 temperature: float, top_p: float, seed: int = 0, resample_flat: int = 0,
                 mode_only: bool = False, workdir: str | Path | None = None):
        self.by_prompt = {p.prompt: p for p in problems}
        self.tasks = dict(tasks)
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.seed, self.resample_flat, self.mode_only = seed, resample_flat, mode_only
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ttscale-rollout-"))
        self._rng = random.Random(f"resample/{seed}")
        self._cells: dict[tuple, list[Problem]] = {}
        for p in problems:
            self._cells.setdefault((p.task, p.level), []).append(p)
        self._next = {c: 0 for c in self._cells}
        self.informative = {c: 0.5 for c in self._cells}  # running share of groups with signal
        self._engine = None
        self._step = -1
        self._calls = 0

    # -- TRL's interface ---------------------------------------------------------------------
    def __call__(self, prompts: list, trainer) -> dict:
        self._sync(trainer)
        eos = trainer.processing_class.eos_token_id
        groups = _groups(prompts, trainer.num_generations)
        problems = [self.by_prompt[prompts[g[0]]] for g in groups]
        sizes = [len(g) for g in groups]
        samples = self._sample(problems, sizes)
        flat = [self._flat(p, s) for p, s in zip(problems, samples)]
        seen = list(zip(problems, flat))
        for _ in range(self.resample_flat):
            redo = [i for i, f in enumerate(flat) if f]
            if not redo:
                break
            fresh = [self._draw() for _ in redo]
            new = self._sample(fresh, [sizes[i] for i in redo])
            for i, p, s in zip(redo, fresh, new):
                problems[i], samples[i], flat[i] = p, s, self._flat(p, s)
                seen.append((p, flat[i]))
        for p, f in seen:
            key = (p.task, p.level)
            self.informative[key] = 0.9 * self.informative[key] + 0.1 * (not f)
        self._log(trainer, seen, problems, samples)
        out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "problem_id", "gen_length",
                                                "env_mask")}
        for p, group in zip(problems, samples):
            for ids, c in group:
                gen = list(c.token_ids) + ([eos] if c.finish_reason == "stop" else [])
                out["prompt_ids"].append(ids)
                out["completion_ids"].append(gen)
                out["problem_id"].append(p.id)
                out["gen_length"].append(len(gen))
                if self.mode_only:
                    head = self._first_line_tokens(gen)
                    out["env_mask"].append([1] * head + [0] * (len(gen) - head))
        trainer._metrics["train"]["gen_length"].append(sum(out["gen_length"]) / len(out["gen_length"]))
        if not self.mode_only:
            del out["env_mask"]
        return {**out, "logprobs": None}

    def _first_line_tokens(self, ids: list[int]) -> int:
        """How many of `ids` it takes to complete the first line (all of them if it never ends);
        one token decoded at a time (a newline is one byte, whole in the token holding it)."""
        return next((k + 1 for k, t in enumerate(ids) if "\n" in self._engine.detokenize([t])), len(ids))

    def close(self) -> None:
        self._engine = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- pieces ------------------------------------------------------------------------------
    def _sync(self, trainer) -> None:
        """Reload the engine from the policy's weights once per optimizer step."""
        step = trainer.state.global_step
        if self._engine is not None and step == self._step:
            return
        from safetensors.torch import save_file

        from ttscale.engine.torch_engine import TorchEngine

        model = trainer.accelerator.unwrap_model(trainer.model)
        model.config.save_pretrained(self.workdir)
        tied = getattr(model.config, "tie_word_embeddings", False)
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()
                   if not (tied and k == "lm_head.weight")}  # a tied head is the embedding, stored once
        save_file(weights, str(self.workdir / "model.safetensors"), metadata={"format": "pt"})
        if not (self.workdir / "tokenizer.json").exists():
            trainer.processing_class.save_pretrained(self.workdir)
        self._engine = TorchEngine(self.workdir, device=str(trainer.accelerator.device),
                                   prefix_cache_bytes=32 * 2**20)
        self._step = step

    def _sample(self, problems: Sequence[Problem], sizes: Sequence[int]) -> list[list[tuple]]:
        """Per problem, its samples as (prompt ids, Completion)."""
        self._calls += 1
        reqs = [GenerationRequest(p.prompt, SamplingParams(
            n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
            seed=hash((self.seed, self._step, self._calls, j)) % 2**31))
            for j, (p, n) in enumerate(zip(problems, sizes))]
        out: list[list[tuple]] = []
        for p, r in zip(problems, self._engine.generate(reqs)):
            if r.error:
                raise RuntimeError(f"rollout of problem {p.id!r} failed: {r.error}")
            ids = self._engine.tokenize(p.prompt)
            out.append([(ids, c) for c in r.completions])
        return out

    def _flat(self, problem: Problem, group: list) -> bool:
        task = self.tasks[problem.task]
        right = {task.is_correct(problem, c.text) for _, c in group}
        return len(right) == 1

    def _log(self, trainer, seen: list[tuple[Problem, bool]], problems: list[Problem],
             samples: list[list[tuple]]) -> None:
        metrics = trainer._metrics["train"]
        modes: dict[str, list[bool]] = {}  # per task and level of the auto prompts: long mode chosen?
        for p, group in zip(problems, samples):
            if p.prompt.startswith(AUTO_PREFIX):
                key = f"frac_high/{p.task}/L{p.level}" if p.level is not None else f"frac_high/{p.task}"
                modes.setdefault(key, []).extend(chosen_mode(c.text) == "high" for _, c in group)
        for key in sorted(modes):
            metrics[key].append(sum(modes[key]) / len(modes[key]))
        metrics["groups_sampled"].append(len(seen))
        metrics["frac_flat_sampled"].append(sum(f for _, f in seen) / len(seen))
        for level in sorted({p.level for p, _ in seen if p.level is not None}):
            at = [f for p, f in seen if p.level == level]
            metrics[f"frac_flat_sampled/L{level}"].append(sum(at) / len(at))

    def _draw(self) -> Problem:
        """A replacement problem: its cell by the curriculum, then the cell's problems in turn."""
        cells = list(self._cells)
        cell = self._rng.choices(cells, weights=[self.informative[c] + 0.05 for c in cells])[0]
        i = self._next[cell]
        self._next[cell] = (i + 1) % len(self._cells[cell])
        if i == 0:
            self._rng.shuffle(self._cells[cell])
        return self._cells[cell][i]


def _groups(prompts: Sequence, size: int) -> list[list[int]]:
    """Indices of each group: TRL repeats each prompt `size` times in a row."""
    groups = [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]
    for g in groups:
        if len(g) != size or any(prompts[i] != prompts[g[0]] for i in g):
            raise RuntimeError(f"rollout batch is not made of groups of {size} equal prompts")
    return groups
