"""`ttscale sweep`: strategies x budgets x problems, as resumable JSONL records.

Two kinds of work per (model, problem):

- **Sample once, select many.** N_max samples are drawn in one request (one prefill), graded
  and scored, and stored in `samples.jsonl`. Every selection rule (majority, best-of-N,
  weighted majority, pass@k, ESC, Adaptive-Consistency) at every n in `ns` is then evaluated
  from that store, on `replicates` orders of the samples, at no generation cost; the cost of
  each record is that of the samples it used, prefill counted once.
- **Run for real.** Strategies that cannot be simulated from independent samples (greedy,
  beam search, MCTS, REBASE, self-refinement, ...) run through `ttscale.strategies.solve`.

**Sampler settings are part of a configuration.** `temperatures` x `min_ps` x `efforts` is the
sampler grid: the samples of each setting are drawn once per problem (one store each) and every
rule is selected from them many times; strategies run for real at each effort. The first value
of each list is the base setting; a configuration at another setting carries the values that
differ in its parameters (`majority(n=8,temperature=1.0)`), so the planner chooses them per
difficulty bin like the strategy and N, and base-setting records keep their names.

Each record is one (model, problem, strategy, parameters, budget, seed) and is appended and
flushed as soon as it exists (`eval.store`), so `resume=True` skips done keys and a killed
run ends with exactly the records of an uninterrupted one. Models listed in
`baseline_models` run only the `baseline_runs` (greedy by default): the large-model side of
"a small model with search against a large model's greedy decoding".
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ttscale.engine.base import Generator
from ttscale.errors import TTScaleError, unknown
from ttscale.eval.store import RESULTS_FILE, SAMPLES_FILE, JsonlStore, record_key
from ttscale.planner.plan import config_id
from ttscale.planner.solve import run_params
from ttscale.planner.samples import (NEEDS_SCORES, ORACLE_RULES, SELECTION_RULES, STOPPING_RULES,
                                     SampleSet, draw_samples, rounds_of, sample_order, select,
                                     setting_id)
from ttscale.strategies.stopping import AC_THRESHOLD, CONFIDENCE, ESC_WINDOW
from ttscale.types import Problem, SamplingParams

CONFIG_FILE = "sweep.json"
SIDE_SCORERS = ("checker",)  # zero-FLOP scorers a sweep can show beside its learned one
SIDE_RULES = ("best_of_n", "weighted_majority")  # the rules recorded with a side scorer's scores
# confident consistency's default grid: 1 - confidence evenly spaced in log from 0.2 to 0.005
CONFIDENCES = tuple(round(1 - 0.2 * 40 ** (-i / 8), 4) for i in range(9))


@dataclass
class RunSpec:
    """A strategy run for real at one budget: its name and parameters (ttscale.strategies)."""

    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    scorer: str | None = None  # overrides the sweep's scorer for this run (e.g. "prm")
    efforts: list[str] | None = None  # the grid's modes it runs in (None: all of them)

    @property
    def budget(self) -> float:
        p = self.params
        for k in ("n", "simulations", "num_simulations", "iterations", "rounds", "max_tokens"):
            if k in p:
                return float(p[k])
        return 1.0


@dataclass
class SweepConfig:
    """What a sweep measures. Budgets: `ns` for the sample-store rules, and each RunSpec."""

    models: list[str]  # policy models that run the whole grid
    tasks: list[str] = field(default_factory=lambda: ["countdown"])
    levels: list[int] | None = None  # built-in task levels (None: all); ignored for JSONL tasks
    num_problems: int = 20  # per task and level
    split: str = "test"
    seed: int = 0
    backend: str = "torch"
    n_max: int = 16  # samples stored per problem
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    rules: list[str] = field(default_factory=lambda: list(SELECTION_RULES))
    replicates: int = 4  # orders of the stored samples each rule is evaluated on
    temperature: float = 1.0  # the base setting's (the first of `temperatures` when given)
    temperatures: list[float] | None = None  # sampler grid; None: [temperature]
    min_ps: list[float] = field(default_factory=lambda: [0.0])
    efforts: list[str] = field(default_factory=lambda: ["low"])
    top_p: float = 1.0
    max_tokens: int = 96
    scorer: str | None = "likelihood"  # scores samples for best-of-N and weighted voting
    # scorers whose best-of-N and weighted-voting records are shown beside the headline, never
    # in it: the `checker` (tasks whose answer checks from the problem alone; others skip it)
    side_scorers: list[str] = field(default_factory=list)
    runs: list[RunSpec] = field(default_factory=lambda: [RunSpec("greedy")])
    esc_window: int = ESC_WINDOW
    ac_threshold: float = AC_THRESHOLD
    # confident consistency's confidences (one configuration each, at the largest n): evenly
    # spaced in log(1 - score) for the likelihood scorer, from 0.8 to 0.995
    confidences: list[float] = field(default_factory=lambda: list(CONFIDENCES))
    baseline_models: list[str] = field(default_factory=list)
    baseline_runs: list[RunSpec] = field(default_factory=lambda: [RunSpec("greedy")])
    shots: int = 0  # worked examples before each JSONL question (base models)
    shots_from: str | None = None  # their train file (default: X_train.jsonl beside X_test)

    def validate(self) -> None:
        if not self.models:
            raise TTScaleError("a sweep needs at least one model")
        if self.n_max < 1:
            raise TTScaleError(f"n_max={self.n_max} is out of range; accepted: >= 1")
        bad = [n for n in self.ns if not 1 <= n <= self.n_max]
        if bad:
            raise TTScaleError(f"ns={bad} are out of range; accepted: 1 <= n <= n_max={self.n_max}")
        for r in self.rules:
            if r not in SELECTION_RULES:
                raise unknown("selection rule", r, SELECTION_RULES)
        for c in self.confidences:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
                raise TTScaleError(f"confidence={c!r} is not a number; accepted: finite numbers on "
                                   "the scorer's scale (likelihood: 0 to 1)")
        if len(set(self.confidences)) != len(self.confidences):
            raise TTScaleError(f"confidences={self.confidences} must not repeat a value")
        if self.replicates < 1:
            raise TTScaleError(f"replicates={self.replicates} is out of range; accepted: >= 1")
        if self.num_problems < 1:
            raise TTScaleError(f"num_problems={self.num_problems} is out of range; accepted: >= 1")
        from ttscale.tasks.effort import check_effort

        for name, values in (("temperatures", self.grid_temperatures), ("min_ps", self.min_ps),
                             ("efforts", self.efforts)):
            if not values or len(set(values)) != len(values):
                raise TTScaleError(f"{name}={values} must be a non-empty list without repeats")
        for t in self.grid_temperatures:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 10:
                raise TTScaleError(f"temperature={t!r} is out of range; accepted: 0 <= t <= 10")
        for m in self.min_ps:
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1:
                raise TTScaleError(f"min_p={m!r} is out of range; accepted: 0 <= min_p <= 1 (0 = off)")
        for e in self.efforts:
            check_effort(e)
        for name in self.side_scorers:
            if name not in SIDE_SCORERS:
                raise unknown("side scorer", name, SIDE_SCORERS)
        from ttscale.strategies import get_params

        for spec in self.runs + self.baseline_runs:  # fail before any work starts
            get_params(spec.strategy, run_params(spec.strategy, spec.params, self.max_tokens, 0))
            for e in spec.efforts or []:
                if e not in self.efforts:
                    raise TTScaleError(f"run {spec.strategy!r} asks for effort {e!r}, which is not in "
                                       f"the grid; accepted: {', '.join(self.efforts)}")

    @property
    def grid_temperatures(self) -> list[float]:
        return list(self.temperatures) if self.temperatures else [self.temperature]

    @property
    def sampling(self) -> dict[str, Any]:
        """The base setting (what the planner's probe samples with)."""
        out = {"temperature": self.grid_temperatures[0], "top_p": self.top_p,
               "max_tokens": self.max_tokens}
        if self.min_ps[0]:
            out["min_p"] = self.min_ps[0]
        if self.efforts[0] != "low":
            out["effort"] = self.efforts[0]
        return out

    def settings(self) -> list[dict[str, Any]]:
        """The sampler grid, base first: each setting as what differs from the base."""
        base = {"temperature": self.grid_temperatures[0], "min_p": self.min_ps[0],
                "effort": self.efforts[0]}
        out = []
        for t in self.grid_temperatures:
            for m in self.min_ps:
                for e in self.efforts:
                    full = {"temperature": t, "min_p": m, "effort": e}
                    out.append({k: v for k, v in full.items() if v != base[k]})
        return out

    def setting_sampling(self, setting: dict[str, Any]) -> dict[str, Any]:
        """The sampling dict of one setting (the base's with the setting's values); at effort
        "high" the token limit is raised to fit long-mode chains (tasks/effort.py)."""
        from ttscale.tasks.effort import max_tokens_for

        out = {**self.sampling, **setting}
        if not out.get("min_p"):
            out.pop("min_p", None)
        if out.get("effort", "low") == "low":
            out.pop("effort", None)
        out["max_tokens"] = max_tokens_for(out.get("effort", "low"), self.max_tokens)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        d = dict(d)
        d["runs"] = [RunSpec(**r) for r in d.get("runs", [])]
        d["baseline_runs"] = [RunSpec(**r) for r in d.get("baseline_runs", [])]
        return cls(**d)


@dataclass
class SweepResult:
    results_dir: str
    records: int  # records in the store at the end
    written: int  # records this call wrote (0 when everything was already done)
    wall_s: float


def problem_set(cfg: SweepConfig) -> list[tuple[Any, Problem]]:
    """(task, problem) pairs of the sweep, in a fixed order."""
    from ttscale.tasks import BuiltinTask, get_task

    out = []
    for name in cfg.tasks:
        task = get_task(name, shots=cfg.shots, shots_from=cfg.shots_from)
        if isinstance(task, BuiltinTask):
            for lv in cfg.levels or list(task.levels):
                if lv not in task.levels:
                    raise unknown("level", lv, task.levels)
                out += [(task, p) for p in task.problems(cfg.split, lv, cfg.num_problems, cfg.seed)]
        else:
            out += [(task, p) for p in task.problems(cfg.split, None, cfg.num_problems, cfg.seed)]
    return out


def problem_seed(seed: int, problem_id: str) -> int:
    """The sampling seed of one problem: a pure function of the sweep seed and the problem."""
    h = hashlib.sha256(f"{seed}|{problem_id}".encode()).digest()
    return int.from_bytes(h[:4], "big") % (2**31 - 1)


def _cost_fields(cost) -> dict[str, Any]:
    d = cost.to_dict()
    return {"flops": d["flops"], "tokens": d["tokens"], "wall_s": d["wall_s"], "cost": d}


def _base(model: str, backend: str, task, p: Problem, cfg: SweepConfig) -> dict[str, Any]:
    return {"model": model, "backend": backend, "task": task.name, "level": p.level,
            "split": cfg.split, "problem_id": p.id}


def _identity(base: dict[str, Any]) -> dict[str, Any]:
    """What identifies a record: everything but the backend, which must not change results."""
    return {k: v for k, v in base.items() if k != "backend"}


def _rule_params(rule: str, n: int, cfg: SweepConfig) -> list[dict[str, Any]]:
    """The configurations of `rule` at budget `n` (one per confidence for confident consistency)."""
    if rule == "esc":
        return [{"n": n, "window": min(cfg.esc_window, n)}]
    if rule == "adaptive_consistency":
        return [{"n": n, "threshold": cfg.ac_threshold}]
    if rule == "confident_consistency":
        return [{"n": n, "threshold": cfg.ac_threshold, "confidence": c} for c in cfg.confidences]
    return [{"n": n}]


def _rule_ns(rule: str, cfg: SweepConfig) -> list[int]:
    if rule == "confident_consistency":  # its grid is the confidence: at the largest n only
        return [max(cfg.ns)] if max(cfg.ns) >= 2 else []
    if rule in STOPPING_RULES:  # a stopping rule at n=1 is plain sampling
        return [n for n in cfg.ns if n >= 2]
    return list(cfg.ns)


def selection_records(base: dict[str, Any], task, problem: Problem, ss: SampleSet,
                      cfg: SweepConfig, scorer_name: str | None,
                      setting: dict[str, Any] | None = None,
                      side: bool = False) -> list[dict[str, Any]]:
    """Every rule x n x replicate record of one problem's stored samples of one sampler
    `setting` (default: the base), with no generation. With `side`, `ss` carries the scores
    of the side scorer `scorer_name` and only the rules that read scores are recorded, named
    with it (`best_of_n(n=16,scorer=checker)`) and marked `side_scorer`."""
    out = []
    setting = dict(setting or {})
    for rule in cfg.rules:
        if rule in NEEDS_SCORES and not ss.has_scores or side and rule not in SIDE_RULES:
            continue
        for n, own in ((n, p) for n in _rule_ns(rule, cfg) for p in _rule_params(rule, n, cfg)):
            params = {**own, **setting, **({"scorer": scorer_name} if side else {})}
            uses_scorer = rule in NEEDS_SCORES
            for rep in range(cfg.replicates):
                order = sample_order(ss.n, rep)
                sel = select(rule, task, ss, n, order, window=params.get("window", cfg.esc_window),
                             threshold=cfg.ac_threshold,
                             confidence=params.get("confidence", CONFIDENCE))
                cost = ss.cost(order[:sel.used], scored=uses_scorer)
                rounds = rounds_of(rule, order, sel.used, params.get("window", cfg.esc_window))
                scorer = scorer_name if uses_scorer else None
                key = record_key(**_identity(base), strategy=rule, params=params, seed=rep,
                                 sampling=cfg.sampling, scorer=scorer, n_max=cfg.n_max)
                out.append({"key": key, **base, "strategy": rule, "params": params,
                            "setting": setting_id(setting),
                            "config": config_id(rule, params), "budget": n, "seed": rep,
                            "scorer": scorer, "oracle": rule in ORACLE_RULES or scorer == "oracle",
                            "source": "samples", "answer": sel.answer, "correct": sel.correct,
                            "samples_used": sel.used, "depth": len(rounds),
                            "latency_s": ss.latency(rounds, uses_scorer), **_cost_fields(cost),
                            **({"side_scorer": scorer_name} if side else {})})
    return out


def side_scored(ss: SampleSet, scorer, problem: Problem) -> SampleSet:
    """The samples scored by a zero-FLOP side scorer instead (its measured time kept)."""
    t0 = time.perf_counter()
    scores = [s.value for s in scorer.score(problem, ss.texts).scores]
    return replace(ss, scores=scores, verifier_flops=[0.0] * ss.n, verifier_tokens=[0] * ss.n,
                   score_wall_s=time.perf_counter() - t0)


def _samples_record(key: str, base: dict[str, Any], problem: Problem, ss: SampleSet,
                    scorer_name: str | None, seed: int,
                    setting: dict[str, Any] | None = None) -> dict[str, Any]:
    """One problem's stored samples at one sampler setting; also readable by
    `ttscale select --samples`."""
    d = ss.to_dict()
    texts = d.pop("texts")
    rec = {"key": key, **base, "seed": seed, "scorer": scorer_name,
           "setting": setting_id(setting or {}), "setting_params": dict(setting or {}),
           "problem": problem.question, "answer": problem.answer, "responses": texts,
           "preds": ss.answers, "set": d}
    if ss.has_scores:
        rec["scores"] = ss.scores
    return rec


def make_generator(model: str, backend: str = "torch", **options: Any) -> Generator:
    """A generator for `model` on `backend` (`torch`, `hf`, or `openai` with `base_url`)."""
    from ttscale.engine import load_generator

    if backend == "openai":  # base_url: one URL, several comma-separated, or a list
        from ttscale.engine.flops import SHAPE_FLAGS
        from ttscale.engine.openai_backend import from_spec

        base_url = options.pop("base_url", None)
        if not base_url:
            raise TTScaleError("the openai backend needs a base URL (--base-url)")
        shape = options.pop("shape", None)
        if shape is not None:
            options.update(n_params=shape.n_params, n_layer=shape.n_layer, d_model=shape.d_model)
        elif not any(options.get(k) for k in ("shape_from", "n_params", "n_layer", "d_model")):
            from ttscale.models.registry import resolve_model

            try:  # a shipped model served under its own name has a known shape
                options["shape_from"] = resolve_model(model)
            except TTScaleError:
                raise TTScaleError(f"a sweep compares strategies by FLOPs: give the shape of "
                                   f"the served model {model!r} ({SHAPE_FLAGS})") from None
        return from_spec(base_url, model_name=model, **options)
    return load_generator(model, backend=backend, **options)


def run_sweep(cfg: SweepConfig, out: str | Path, resume: bool = False, progress: bool = True,
              generators: dict[str, Generator] | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> SweepResult:
    """Run (or resume) a sweep into `out`: results.jsonl, samples.jsonl and sweep.json.

    Without `resume` an existing store in `out` is replaced. `generators` maps a model name
    to a ready Generator (any backend); other models are loaded with `make_generator`.
    """
    from tqdm import tqdm

    from ttscale.rewards import get_scorer
    from ttscale.tasks.effort import apply_effort

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1))
    results = JsonlStore(out / RESULTS_FILE, resume=resume)
    samples = JsonlStore(out / SAMPLES_FILE, resume=resume)
    t0 = time.perf_counter()
    written = 0
    pairs = problem_set(cfg)
    settings = cfg.settings()
    asked = {(p.id, e): apply_effort(p, e) for _, p in pairs for e in cfg.efforts}  # refuses before work
    jobs = [(m, cfg.runs, True) for m in cfg.models] + [
        (m, cfg.baseline_runs, False) for m in cfg.baseline_models if m not in cfg.models]
    # baselines (the larger model's greedy answer) run in the base setting's mode only: the
    # comparison is with that model as deployed, and a model without a long mode has none to run
    total = sum(len(pairs) * (sum(len(run_efforts(cfg, spec, grid)) for spec in runs)
                              + (len(settings) if grid else 0)) for m, runs, grid in jobs)
    bar = tqdm(total=total, desc="sweep", unit="job", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    generators = dict(generators or {})
    models_path = out / "models.json"
    shapes: dict[str, Any] = json.loads(models_path.read_text()) if models_path.exists() else {}

    def generator_for(model: str) -> Generator:
        g = generators.get(model) or generators.setdefault(model, make_generator(model, cfg.backend))
        if model not in shapes:  # model sizes, for the report's small-vs-large comparison
            shapes[model] = {"n_params": g.shape.n_params, "n_layer": g.shape.n_layer,
                             "d_model": g.shape.d_model}
            models_path.write_text(json.dumps(shapes, indent=1))
        return g

    def emit(rec: dict[str, Any]) -> None:
        nonlocal written
        if results.append(rec):
            written += 1
            if on_record is not None:
                on_record(rec)

    try:
        for model, runs, grid in jobs:
            gen = None
            scorers: dict[str, Any] = {}
            for task, p in pairs:
                base = _base(model, cfg.backend, task, p, cfg)
                seed = problem_seed(cfg.seed, p.id)
                for setting in settings if grid else []:
                    sampling = cfg.setting_sampling(setting)
                    skey = record_key(kind="samples", **_identity(base), n=cfg.n_max, sampling=sampling,
                                      scorer=cfg.scorer, seed=seed)
                    stored = samples.get(skey)
                    if stored is None:
                        gen = gen or generator_for(model)
                        scorer = _scorer(scorers, cfg.scorer, task, gen, get_scorer)
                        sp = SamplingParams(n=cfg.n_max, temperature=sampling["temperature"],
                                            top_p=cfg.top_p, max_tokens=sampling["max_tokens"], seed=seed,
                                            min_p=float(sampling.get("min_p", 0.0)))
                        _fresh(gen)
                        asked_p = asked[(p.id, sampling.get("effort", "low"))]
                        ss = draw_samples(gen, asked_p, task, cfg.n_max, sp, scorer)
                        stored = _samples_record(skey, base, asked_p, ss, cfg.scorer, seed, setting)
                        samples.append(stored)
                    ss = SampleSet.from_dict({**stored["set"], "texts": stored["responses"]})
                    for rec in selection_records(base, task, p, ss, cfg, cfg.scorer, setting):
                        if rec["key"] not in results:
                            emit(rec)
                    for name in cfg.side_scorers:
                        if not _side_applies(name, task):
                            continue
                        side = side_scored(ss, _scorer(scorers, name, task, None, get_scorer), p)
                        for rec in selection_records(base, task, p, side, cfg, name, setting, side=True):
                            if rec["key"] not in results:
                                emit(rec)
                    bar.update(1)
                for spec in runs:
                    for effort in run_efforts(cfg, spec, grid):
                        emit_run = _run_record(spec, effort, cfg, base, task, asked[(p.id, effort)], seed,
                                               results)
                        if emit_run is not None:
                            gen = gen or generator_for(model)
                            emit(emit_run(gen, lambda name: _scorer(scorers, name, task, gen, get_scorer)))
                        bar.update(1)
    finally:
        bar.close()
        results.close()
        samples.close()
    return SweepResult(str(out), len(results), written, time.perf_counter() - t0)


def _side_applies(name: str, task) -> bool:
    """Whether side scorer `name` can score `task` (the checker: answer checkable)."""
    return name != "checker" or bool(getattr(task, "answer_checkable", False))


def run_efforts(cfg: SweepConfig, spec: RunSpec, grid: bool) -> list[str]:
    """The modes `spec` runs in: the grid's (those it names, if it names some); a baseline model
    (not `grid`) answers in the base setting's mode only, as deployed."""
    if not grid:
        return cfg.efforts[:1]
    return [e for e in cfg.efforts if spec.efforts is None or e in spec.efforts]


def _run_record(spec: RunSpec, effort: str, cfg: SweepConfig, base: dict[str, Any], task,
                problem: Problem, seed: int, results: JsonlStore):
    """A function that runs `spec` for real on `problem` (asked at `effort`) and returns its
    record, or None when the record is already stored."""
    from ttscale.strategies import solve
    from ttscale.tasks.effort import max_tokens_for

    shown = {**spec.params, **({"effort": effort} if effort != cfg.efforts[0] else {})}
    limit = max_tokens_for(effort, cfg.max_tokens)  # long-mode chains need room
    params = run_params(spec.strategy, spec.params, limit, seed)
    uses_scorer = spec.strategy not in ("greedy", "majority", "esc", "adaptive_consistency",
                                        "budget_forcing")
    scorer_name = (spec.scorer or cfg.scorer) if uses_scorer else None
    sampling = {"max_tokens": limit, **({"effort": effort} if effort != "low" else {})}
    key = record_key(**_identity(base), strategy=spec.strategy, params=shown, seed=0,
                     sampling=sampling, scorer=scorer_name)
    if key in results:
        return None

    def run(gen: Generator, scorer_of) -> dict[str, Any]:
        scorer = scorer_of(scorer_name)
        _fresh(gen)
        counted = CountingGenerator(gen)
        sol = solve(problem, task, counted, spec.strategy, params, scorer)
        return {"key": key, **base, "strategy": spec.strategy, "params": shown,
                "setting": setting_id({k: v for k, v in shown.items() if k == "effort"}),
                "config": config_id(spec.strategy, shown),
                "budget": spec.budget, "seed": 0, "scorer": scorer_name,
                "oracle": scorer_name == "oracle", "source": "run",
                "answer": sol.answer, "correct": bool(task.check(problem, sol.answer)),
                "samples_used": None, "depth": counted.calls, "latency_s": sol.cost.wall_s,
                **_cost_fields(sol.cost)}
    return run


class CountingGenerator:
    """A Generator that counts its calls: a strategy's sequential depth (each call waits for
    the one before; the requests within one call run together)."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def generate(self, requests):
        self.calls += 1
        return self.inner.generate(requests)


def _fresh(gen: Generator) -> None:
    """Empty the engine's prefix cache, so that a record costs what its strategy costs when
    run alone: what other records computed before it (in this run, or not at all in a
    resumed one) must not change its FLOPs. Reuse within one strategy run still counts."""
    clear = getattr(getattr(gen, "prefix", None), "clear", None)
    if callable(clear):
        clear()


def _scorer(cache: dict[str, Any], name: str | None, task, gen, get_scorer):
    if name is None:
        return None
    key = f"{name}|{task.name}"
    if key not in cache:
        cache[key] = get_scorer(name, task=task, generator=gen)
    return cache[key]


def load_config(results_dir: str | Path) -> SweepConfig | None:
    p = Path(results_dir) / CONFIG_FILE
    return SweepConfig.from_dict(json.loads(p.read_text())) if p.exists() else None


def parse_runs(text: str | Sequence[str]) -> list[RunSpec]:
    """`"greedy; beam_search:n=4,width=2"` -> RunSpecs (values stay text; strategies coerce)."""
    items = text if not isinstance(text, str) else [t for t in text.split(";")]
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, _, rest = item.partition(":")
        params: dict[str, Any] = {}
        for kv in filter(None, (s.strip() for s in rest.split(","))):
            k, eq, v = kv.partition("=")
            if not eq:
                raise TTScaleError(f"bad strategy parameter {kv!r} in {item!r}; accepted: name=value")
            params[k.strip()] = _number(v.strip())
        out.append(RunSpec(name.strip(), params))
    return out


def _number(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def thinks_long(model_path: str | Path) -> bool:
    """Whether a model's card has long-mode rows (it learned `--effort high`)."""
    card = Path(model_path) / "eval.json"
    return card.exists() and any(r.get("effort") == "high" for r in json.loads(card.read_text()))


def default_config(grid_model: str | None = None) -> SweepConfig:
    """The embedded default: `grid_model` (default: the smallest shipped model that has learned
    the long mode, else the smallest) runs the grid, in both modes when it has learned the long
    one; the largest runs greedy decoding; built-in tasks at
    mixed levels, so problems differ in difficulty; 24 problems per task and level, because with
    12 the planner's cross-validated figures moved with the fold seed by more than their
    targets' margins. Sized to finish within 10 minutes on 2 CPU cores (docs/results.md has the
    timing and why these choices)."""
    from ttscale.models.registry import family_models, list_models, resolve_model

    policies = family_models()
    if not policies:
        raise TTScaleError("no shipped models found; train them with `make models` or pass --model")
    large = policies[-1].name
    if grid_model is None:
        long_mode = [m for m in policies if thinks_long(m.path)]
        small, both_modes = (long_mode or policies)[0].name, bool(long_mode)
    else:
        small, both_modes = grid_model, thinks_long(resolve_model(grid_model))
    runs = [RunSpec("greedy")]
    if any(getattr(m, "kind", "") == "prm" for m in list_models()):  # tree search needs a PRM
        # in the short mode only: a tree search grows a chain a line at a time, to at most
        # max_depth (12) lines, and the long mode's chains run to 30-200 lines
        low = ["low"]
        runs += [RunSpec("beam_search", {"n": 4}, "prm", low), RunSpec("beam_search", {"n": 8}, "prm", low),
                 RunSpec("mcts", {}, "prm", low)]
    return SweepConfig(
        models=[small], baseline_models=[large] if large != small else [],
        tasks=["countdown", "arith"], levels=[1, 2, 3, 4], num_problems=24, split="test",
        n_max=16, ns=[1, 2, 4, 8, 16], replicates=4, temperature=0.6, max_tokens=96,
        efforts=["low", "high"] if both_modes else ["low"],
        scorer="likelihood", side_scorers=["checker"], runs=runs, baseline_runs=[RunSpec("greedy")])
