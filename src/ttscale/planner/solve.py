"""Solve a batch of problems with a plan under a total FLOP budget that is never exceeded.

1. Probe: draw the plan's first k samples of each problem (their cost counts against the
   budget); their agreement gives each problem's difficulty bin.
2. Allocate the rest by expected marginal gain per FLOP (planner.allocate).
3. Run the problems easiest first. Voting configurations continue from the probe's samples;
   stopping rules (ESC, Adaptive-Consistency) draw until they stop, and what a problem does
   not spend flows to later ones. Every call goes through a `BudgetGuard` whose limit is the
   problem's allotment plus the free pool; a call that could overrun is never made and the
   problem keeps the probe's vote.
When the budget cannot pay for probes (or a blind allocation promises more), problems are
solved without a probe on the plan's difficulty-blind frontier.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ttscale.engine.base import Generator
from ttscale.errors import out_of_range
from ttscale.planner.allocate import (BudgetExhausted, BudgetGuard, Ledger, Option, allocate,
                                      tie_ranks)
from ttscale.planner.difficulty import difficulty
from ttscale.planner.plan import NO_ANSWER, PROBE, Plan
from ttscale.planner.samples import (NEEDS_SCORES, ONE_AT_A_TIME, STOPPING_RULES, SampleSet,
                                     draw_samples, select, sequential_stop, split_setting)
from ttscale.rewards.base import Scorer
from ttscale.strategies.stopping import AC_THRESHOLD, CONFIDENCE, ESC_WINDOW, esc_should_stop
from ttscale.tasks.base import Task
from ttscale.types import Problem, SamplingParams


@dataclass
class PlannedAnswer:
    problem_id: str
    answer: str | None
    correct: bool | None  # None when the task cannot check (no reference answer)
    config: str
    difficulty: float | None
    flops: float  # everything this problem cost, probe included


@dataclass
class PlannedRun:
    budget: float
    spent: float
    mode: str
    answers: list[PlannedAnswer] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(bool(a.correct) for a in self.answers) / max(len(self.answers), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "spent": self.spent, "mode": self.mode,
                "accuracy": self.accuracy, "num_problems": len(self.answers),
                "mean_flops": self.spent / max(len(self.answers), 1),
                "problems": [a.__dict__ for a in self.answers]}


def _sampling(plan: Plan, n: int, seed: int, setting: dict[str, Any] | None = None) -> SamplingParams:
    """The plan's base sampling (what the probe draws with), with a setting's values over it."""
    from ttscale.tasks.effort import max_tokens_for

    s = {**plan.sampling, **(setting or {})}
    limit = max_tokens_for(str(s.get("effort", "low")), int(s.get("max_tokens", 128)))
    return SamplingParams(n=n, temperature=float(s.get("temperature", 1.0)),
                          top_p=float(s.get("top_p", 1.0)), max_tokens=limit,
                          seed=seed, min_p=float(s.get("min_p", 0.0)))


def _asked(problem: Problem, plan: Plan, setting: dict[str, Any]) -> Problem:
    """The problem at the effort of the base setting or of `setting`."""
    from ttscale.tasks.effort import apply_effort

    return apply_effort(problem, str(setting.get("effort", plan.sampling.get("effort", "low"))))


def _merge(a: SampleSet, b: SampleSet) -> SampleSet:
    """Samples of two draws of one prompt; the second draw's prefill was (mostly) cached."""
    return SampleSet(a.answers + b.answers, a.keys + b.keys, a.correct + b.correct,
                     a.scores + b.scores, a.texts + b.texts,
                     a.completion_tokens + b.completion_tokens, a.sample_flops + b.sample_flops,
                     a.verifier_flops + b.verifier_flops, a.verifier_tokens + b.verifier_tokens,
                     a.prompt_tokens, a.cached_tokens, a.prefill_flops + b.prefill_flops,
                     a.wall_s + b.wall_s, completions=a.completions + b.completions)


def _stop_params(params: dict[str, Any]) -> dict[str, float]:
    """A stopping configuration's threshold and confidence (their defaults where absent)."""
    return {"threshold": float(params.get("threshold", AC_THRESHOLD)),
            "confidence": float(params.get("confidence", CONFIDENCE))}


def _continue_sampling(plan: Plan, cfg: dict[str, Any], problem: Problem, task: Task,
                       guard: BudgetGuard, scorer: Scorer | None, have: SampleSet | None,
                       seed: int) -> SampleSet:
    """Draw what a voting/stopping configuration needs beyond the samples already drawn (the
    probe's, at the base setting; a configuration at another sampler setting starts afresh).
    A stopping rule that the budget cuts short keeps the samples it drew and answers with
    them, as `simulate` assumes offline (`plan.cut_columns`)."""
    rule = cfg["strategy"]
    setting, params = split_setting(cfg["params"])
    n = int(params["n"])
    sc = scorer if rule in NEEDS_SCORES else None
    call = 1
    asked = _asked(problem, plan, setting)
    if setting:
        have = None

    def more(k: int) -> SampleSet:
        nonlocal call
        call += 1
        return draw_samples(guard, asked, task, k, _sampling(plan, k, seed * 1009 + call, setting), sc)

    ss = have
    if sc is not None and ss is not None and not ss.has_scores:  # score the probe's samples
        batch = sc.score(problem, ss.texts, ss.completions or None)  # `scorer` is already the guard's
        ss.scores = [float(s.value) for s in batch.scores]
    while ss is None or ss.n < n:
        if rule == "esc":
            w = int(params.get("window", ESC_WINDOW))
            if ss is not None and ss.n >= w and esc_should_stop(ss.keys[-w:]):
                break
            k = min(w, n - (ss.n if ss else 0))
        elif rule in ONE_AT_A_TIME:
            if ss is not None and sequential_stop(rule, ss.keys, ss.scores, **_stop_params(params)):
                break
            k = 1
        else:
            k = n - (ss.n if ss else 0)
        try:
            new = more(k)
        except BudgetExhausted:
            if rule in STOPPING_RULES and ss is not None:
                break  # cut short by the budget: a stopping rule answers with what it drew
            raise
        ss = new if ss is None else _merge(ss, new)
    return ss


def _run_option(plan: Plan, cfg: dict[str, Any], problem: Problem, task: Task,
                guard: BudgetGuard, scorer: Scorer | None, probe: SampleSet | None,
                seed: int) -> str | None:
    """One configuration of the plan on one problem: its answer."""
    if cfg["source"] == "samples":
        ss = _continue_sampling(plan, cfg, problem, task, guard, scorer, probe, seed)
        rule_n = ss.n if cfg["strategy"] in STOPPING_RULES else int(cfg["params"]["n"])
        return select(cfg["strategy"], task, ss, min(rule_n, ss.n),
                      window=int(cfg["params"].get("window", ESC_WINDOW)),
                      **_stop_params(cfg["params"])).answer
    from ttscale.strategies import solve

    setting, own = split_setting(cfg["params"], ("effort",))
    limit = _sampling(plan, 1, 0, setting).max_tokens  # room for long chains
    params = run_params(cfg["strategy"], own, limit, seed)
    return solve(_asked(problem, plan, setting), task, guard, cfg["strategy"], params,
                 scorer).answer


def solve_with_plan(problems: Sequence[Problem], task: Task, generator: Generator, plan: Plan,
                    budget: float, scorer: Scorer | None = None, seed: int = 0) -> PlannedRun:
    """Answer `problems` spending at most `budget` FLOPs in all (probes included), with the
    plan fitted on `task` where the plan has one per task (`Plan.for_task`)."""
    if budget <= 0:
        raise out_of_range("budget", budget, "> 0 FLOPs")
    plan = plan.for_task(task.name)
    guard = BudgetGuard(generator, budget)
    gscorer = guard.guard_scorer(scorer)
    n = len(problems)
    sizes = plan.calibration.get("bin_sizes") or [1] * len(plan.bins)
    est_bins = [b for b, s in enumerate(sizes) for _ in range(round(s * n / max(sum(sizes), 1)))][:n]
    est_bins += [len(plan.bins) // 2] * (n - len(est_bins))
    rank = tie_ranks(n, seed)
    probed = plan.can_probe and budget >= n * plan.probe_cost
    if probed:
        # probe first where that paid on held-out calibration problems (`Plan.prefers_probe`);
        # a plan that did not measure it compares the two expected allocations, as offline
        held_out = plan.prefers_probe(budget / n)
        probed = held_out if held_out is not None else (
            allocate([plan.bins[b] for b in est_bins], budget - n * plan.probe_cost,
                     ranks=rank).expected_accuracy
            >= allocate([plan.blind] * n, budget, ranks=rank).expected_accuracy)
    k = plan.probe_samples
    probes: list[SampleSet | None] = [None] * n
    diffs: list[float | None] = [None] * n
    costs = [0.0] * n
    # the probe reads no scores, so it pays for none (as in planner.plan.build_table); it keeps
    # the logprobs a scorer may read later, which come free with the samples
    lp = bool(getattr(scorer, "needs_logprobs", False))
    if probed:
        for i in sorted(range(n), key=lambda i: rank[i]):
            p = problems[i]
            before = guard.spent
            try:
                probes[i] = draw_samples(guard, _asked(p, plan, {}), task, k,
                                         replace(_sampling(plan, k, seed * 7919 + i), logprobs=lp))
                diffs[i] = difficulty(probes[i].keys)
            except BudgetExhausted:
                pass
            costs[i] = guard.spent - before
        frontiers = [plan.bins[plan.bin_of(d)] if d is not None else [Option(NO_ANSWER, 0, 0)]
                     for d in diffs]
        order = sorted(range(n), key=lambda i: (diffs[i] if diffs[i] is not None else 2.0, rank[i]))
    else:
        frontiers = [plan.blind] * n
        order = sorted(range(n), key=lambda i: rank[i])
    ledger = Ledger(frontiers, budget - guard.spent, rank)
    run = PlannedRun(budget, 0.0, "probe" if probed else "blind")
    results: dict[int, PlannedAnswer] = {}
    for i in order:
        p = problems[i]
        k = ledger.upgrade(i)
        before = guard.spent
        guard.share = before + ledger.limit(i)
        fallback = select("majority", task, probes[i], probes[i].n).answer if probes[i] else None
        answer, cfg_name = fallback, ledger.frontiers[i][k].config
        # a call the budget refuses before anything was spent on the problem (the worst case of
        # a long chain no longer fits what is left) falls back to a cheaper option that fits
        for option in ledger.frontiers[i][k::-1]:
            try:
                if option.config not in (PROBE, NO_ANSWER):
                    answer = _run_option(plan, plan.strategies[option.config], p, task, guard,
                                         gscorer, probes[i], seed * 7919 + i)
                cfg_name = option.config if option.config == cfg_name else \
                    f"{cfg_name} (refused; {option.config})"
                break
            except BudgetExhausted:
                if guard.spent > before:  # stopped after spending: no cheaper retry
                    cfg_name, answer = cfg_name + " (stopped)", fallback
                    break
        else:
            cfg_name += " (stopped)"
        spent = guard.spent - before
        ledger.charge(i, spent)
        results[i] = PlannedAnswer(p.id, answer, bool(task.check(p, answer)) if p.answer else None,
                                   cfg_name, diffs[i], costs[i] + spent)
    guard.share = None
    run.answers = [results[i] for i in range(n)]
    run.spent = guard.spent
    return run


def run_params(strategy: str, params: dict[str, Any], max_tokens: int, seed: int) -> dict[str, Any]:
    """A run's parameters: the grid's, plus the sweep's max_tokens and seed where the
    strategy has such fields (tree searches bound each step instead)."""
    import dataclasses

    from ttscale.strategies import STRATEGIES

    names = {f.name for f in dataclasses.fields(STRATEGIES[strategy][1])} if strategy in STRATEGIES else set()
    base = {k: v for k, v in (("max_tokens", max_tokens), ("seed", seed)) if k in names}
    return {**base, **params}
