"""Scorers: the task oracle, learned PRM/ORM, the policy's likelihood, self-certainty, an LLM
judge and the answer checker, by name."""
from __future__ import annotations


from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError, unknown
from ttscale.rewards.aggregate import AGGREGATES, aggregate, check_aggregate
from ttscale.rewards.base import ScoreBatch, Scored, Scorer
from ttscale.tasks.base import Task

SCORERS = ("oracle", "prm", "orm", "likelihood", "self-certainty", "judge", "checker")


def _default_reward_model(kind: str) -> str:
    from ttscale.models.registry import models_dir

    names = ["ttscale-orm", "ttscale-prm"] if kind == "orm" else ["ttscale-prm"]
    for name in names:
        path = models_dir() / name
        if (path / "config.json").exists():
            return str(path)
    raise TTScaleError(f"no {kind.upper()} model given and {models_dir() / names[-1]} does not "
                       "exist; train one with `ttscale train prm` or pass its path as the model")


def _vocab_size(generator: Generator | None) -> int | None:
    """The policy's vocabulary size when the generator tells it (for self-certainty)."""
    for owner in (generator, getattr(generator, "cfg", None), getattr(generator, "config", None)):
        v = getattr(owner, "vocab_size", None)
        if isinstance(v, int) and v > 0:
            return v
    tok = getattr(generator, "tokenizer", None)
    size = getattr(tok, "get_vocab_size", None)
    if callable(size):
        return int(size())
    return None


def get_scorer(name: str, task: Task | None = None, generator: Generator | None = None,
               model: str | None = None, aggregate: str = "last") -> Scorer:
    """A scorer by name.

    `oracle` needs the task; `prm` / `orm` load a learned reward model (`model`: a directory,
    default `models/ttscale-prm`); `likelihood` ranks the policy's own samples by the probability
    it gave their tokens (logprobs, no extra FLOPs); `self-certainty` reads the policy's logprobs (the generator,
    when given, tells the vocabulary size); `judge` asks `model` (loaded as a generator) or else
    `generator` for a verdict; `checker` verifies the final answer from the problem alone
    (tasks with `answer_checkable`, e.g. countdown). `aggregate` turns step scores into a
    solution score.
    """
    check_aggregate(aggregate)
    if name == "oracle":
        if task is None:
            raise TTScaleError("the oracle scorer needs a task")
        from ttscale.rewards.oracle import OracleScorer

        return OracleScorer(task, aggregate=aggregate)
    if name in ("prm", "orm"):
        from ttscale.rewards.prm import load_reward_model

        # a directory, or a shipped name that load_reward_model resolves
        return load_reward_model(model or _default_reward_model(name), aggregate=aggregate,
                                 kind=name)
    if name == "likelihood":
        from ttscale.rewards.likelihood import LikelihoodScorer

        return LikelihoodScorer()
    if name == "self-certainty":
        from ttscale.rewards.self_certainty import SelfCertaintyScorer

        return SelfCertaintyScorer(vocab_size=_vocab_size(generator))
    if name == "judge":
        from ttscale.rewards.judge import JudgeScorer

        if model is not None:
            from ttscale.engine import load_generator

            return JudgeScorer(load_generator(model))
        if generator is None:
            raise TTScaleError("the judge scorer needs a model or a generator to ask")
        return JudgeScorer(generator)
    if name == "checker":
        if task is None:
            raise TTScaleError("the checker scorer needs a task")
        from ttscale.rewards.checker import CheckerScorer

        return CheckerScorer(task)
    raise unknown("scorer", name, SCORERS)


__all__ = ["AGGREGATES", "SCORERS", "ScoreBatch", "Scored", "Scorer", "aggregate", "get_scorer"]
