"""The planner: allocation by marginal gain, plans fitted on calibration data, budgets that
are never exceeded (offline from a table, online with a real engine)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ttscale.planner.allocate import Option, allocate, efficient_frontier
from ttscale.planner.difficulty import agreement, assign_bin, num_bins, quantile_edges
from ttscale.planner.plan import (Plan, Table, budget_grid, cross_validate, fit_plan,
                                  fixed_points, per_task_fixed_points, planner_headline, simulate)


def synthetic_table(n_problems: int = 60, seed: int = 0) -> Table:
    """Easy problems (probe agrees) are solved by cheap voting; hard ones only by an
    expensive search; costs vary per instance like real token counts do."""
    rng = np.random.default_rng(seed)
    diff = rng.choice([0.0, 0.25, 0.5, 0.75], size=n_problems, p=[0.4, 0.3, 0.2, 0.1])
    hard = diff >= 0.5
    configs = ["majority(n=4)", "majority(n=16)", "beam_search(n=8)"]
    base = np.array([4e6, 16e6, 40e6])
    raw = base * rng.uniform(0.7, 1.3, size=(n_problems, 3))
    p_ok = np.where(hard[:, None], [0.1, 0.2, 0.8], [0.97, 0.97, 0.97])
    acc = (rng.random((n_problems, 3)) < p_ok).astype(float)
    probe = raw[:, 0].copy()
    extra = np.stack([np.zeros(n_problems), raw[:, 1] - probe, raw[:, 2]], axis=1)
    return Table("m", [f"p{i}" for i in range(n_problems)], [0] * n_problems, [1] * n_problems,
                 diff, probe, acc[:, 0].copy(), configs,
                 {c: {"strategy": c.split("(")[0], "params": {}, "source": "run"} for c in configs},
                 acc, raw, extra, np.full((n_problems, 3), np.nan))


def test_agreement_probe_needs_no_answer_key():
    assert agreement(["7", "7", "7", "7"]) == 1.0
    assert agreement(["7", "8", "7", None]) == 0.5
    assert agreement([None, None, None, None]) == 0.0


def test_bins_follow_quantiles_and_never_split_ties():
    values = [0.0] * 30 + [0.25] * 10 + [0.5] * 10 + [1.0] * 10
    edges = quantile_edges(values, num_bins(len(values)))
    bins = [assign_bin(v, edges) for v in values]
    for v in set(values):  # equal difficulties share a bin
        assert len({b for b, x in zip(bins, values) if x == v}) == 1
    assert bins[0] == 0 and max(bins) == len(edges)
    assert num_bins(12) == 1 and num_bins(1000) == 5


def test_allocation_matches_brute_force_on_a_small_batch():
    rng = np.random.default_rng(1)
    frontiers = []
    for _ in range(4):
        opts = [Option("free", 0.0, rng.uniform(0, 0.3))]
        opts += [Option(f"c{j}", float(c), float(a)) for j, (c, a) in enumerate(
            zip(np.cumsum(rng.uniform(1, 3, 3)), sorted(rng.uniform(0.3, 1, 3))))]
        frontiers.append(efficient_frontier(opts))
    for budget in (0.0, 2.0, 5.0, 9.0, 30.0):
        got = allocate(frontiers, budget)
        assert got.expected_cost <= budget + 1e-9
        best = max(sum(f[c].accuracy for f, c in zip(frontiers, choice))
                   for choice in itertools.product(*[range(len(f)) for f in frontiers])
                   if sum(f[c].cost for f, c in zip(frontiers, choice)) <= budget)
        # greedy on concave frontiers is optimal up to one partial step per budget
        worst_step = max(f[j + 1].accuracy - f[j].accuracy for f in frontiers for j in range(len(f) - 1))
        assert got.expected_accuracy >= best - worst_step - 1e-9


def test_an_overrun_costs_later_problems_upgrades_not_their_answers():
    """Four problems, each allotted the dear option; the first spends twice its allotment.
    The problem after it is downgraded to the cheap answer, never to answering nothing,
    while the budget left still covers it; the total stays within the budget."""
    from ttscale.planner.allocate import NO_ANSWER, Ledger

    frontier = [Option(NO_ANSWER, 0.0, 0.0), Option("cheap", 1.0, 0.5), Option("dear", 10.0, 0.9)]
    ledger = Ledger([frontier] * 4, budget=40.0, ranks=[0, 1, 2, 3])
    assert ledger.choice == [2, 2, 2, 2]
    spent = []
    for i, cost in zip(range(4), [20.0, 10.0, 10.0, 10.0]):
        k = ledger.upgrade(i)
        pay = min(cost if k == 2 else frontier[k].cost, ledger.limit(i))
        ledger.charge(i, pay)
        spent.append((frontier[k].config, pay))
    assert NO_ANSWER not in [c for c, _ in spent], spent
    assert [c for c, _ in spent] == ["dear", "cheap", "cheap", "dear"], spent
    assert sum(p for _, p in spent) <= 40.0 + 1e-9


def test_simulated_planner_never_spends_more_than_its_budget():
    table = synthetic_table()
    plan = fit_plan(table)
    for per_problem in budget_grid(table, 12) + [1e5, 3e6]:
        total = per_problem * len(table)
        spend = simulate(plan, table, total)
        assert spend.flops.sum() <= total + 1e-6, (per_problem, spend.mode)


def test_plan_spends_where_it_pays_and_beats_one_fixed_strategy():
    table = synthetic_table(200, seed=2)
    fixed = {p.config: p for p in fixed_points(table)}
    beam = fixed["beam_search(n=8)"]
    curve = cross_validate(table, budget_grid(table, 16) + [beam.flops / 2], k=5)
    assert all(c.flops <= c.budget * (1 + 1e-9) for c in curve)
    # Easy problems stop at the probe's vote, hard ones get search: on held-out problems the
    # planner comes within 3 points of search-for-all at half its compute, and beats every
    # fixed strategy that fits that budget by far.
    half = next(c for c in curve if c.budget == beam.flops / 2)
    assert half.accuracy >= beam.accuracy - 0.03
    assert half.accuracy >= fixed["majority(n=16)"].accuracy + 0.1
    head = planner_headline(curve, list(fixed.values()))
    assert head["accuracy_gain"] is not None
    plan = fit_plan(table)
    assert plan.choose(0.0, 40e6 + plan.probe_cost).startswith(("probe", "majority"))
    assert plan.choose(0.75, 60e6 + plan.probe_cost) == "beam_search(n=8)"


def test_plan_round_trips_through_its_file(tmp_path):
    plan = fit_plan(synthetic_table())
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert loaded == plan


def test_missing_plan_file_is_a_clear_error(tmp_path):
    from ttscale.errors import TTScaleError

    with pytest.raises(TTScaleError, match="does not exist"):
        Plan.load(tmp_path / "nope.json")


def test_online_planner_never_exceeds_its_budget(random_model_dir):
    """A real engine, a plan whose options are voting and greedy decoding: whatever the
    budget, the FLOPs actually spent (probes included) stay within it."""
    from ttscale.engine import load_generator
    from ttscale.planner.solve import solve_with_plan
    from ttscale.tasks import get_task

    gen = load_generator(random_model_dir)
    task = get_task("countdown")
    problems = task.problems("test", 2, 4, seed=0)
    strategies = {"majority(n=8)": {"strategy": "majority", "params": {"n": 8}, "source": "samples"},
                  "adaptive_consistency(n=8,threshold=0.95)": {
                      "strategy": "adaptive_consistency", "params": {"n": 8, "threshold": 0.95},
                      "source": "samples"},
                  "greedy()": {"strategy": "greedy", "params": {}, "source": "run"}}
    sample_cost = 2e6
    plan = Plan("random", 4, 4 * sample_cost, [0.5],
                [[Option("probe", 0, 0.2), Option("adaptive_consistency(n=8,threshold=0.95)", 2 * sample_cost, 0.4)],
                 [Option("probe", 0, 0.1), Option("majority(n=8)", 4 * sample_cost, 0.3)]],
                [Option("none", 0, 0), Option("greedy()", sample_cost, 0.1)],
                strategies, {"temperature": 1.0, "max_tokens": 24}, {"bin_sizes": [2, 2]})
    for budget in (3e6, 2e7, 6e7, 2e8):
        run = solve_with_plan(problems, task, gen, plan, budget)
        assert run.spent <= budget
        assert sum(a.flops for a in run.answers) == pytest.approx(run.spent)
        assert len(run.answers) == len(problems)
    assert run.mode == "probe" and any(a.config != "probe" for a in run.answers)


def test_online_planner_scores_the_probes_samples_with_a_logprob_scorer(random_model_dir):
    """A plan that answers by best-of-N over the probe's samples plus more, scored by the
    policy's likelihood: the probe keeps the logprobs the scorer reads (no error, no re-draw)."""
    from ttscale.engine import load_generator
    from ttscale.planner.solve import solve_with_plan
    from ttscale.rewards import get_scorer
    from ttscale.tasks import get_task

    gen = load_generator(random_model_dir)
    task = get_task("countdown")
    problems = task.problems("test", 2, 3, seed=0)
    strategies = {"best_of_n(n=8)": {"strategy": "best_of_n", "params": {"n": 8}, "source": "samples"}}
    plan = Plan("random", 4, 8e6, [0.5],
                [[Option("best_of_n(n=8)", 8e6, 0.4)], [Option("best_of_n(n=8)", 8e6, 0.4)]],
                [Option("none", 0, 0)], strategies, {"temperature": 1.0, "max_tokens": 24},
                {"bin_sizes": [2, 2]})
    run = solve_with_plan(problems, task, gen, plan, 1e9, get_scorer("likelihood"))
    assert run.mode == "probe"
    assert [a.config for a in run.answers] == ["best_of_n(n=8)"] * 3


def two_task_table(n_per_task: int = 60, seed: int = 0, named: bool = True) -> Table:
    """Task "a" is solved by the cheap configuration, task "b" only by the expensive one; the
    probe tells nothing (every problem looks alike), so only the task can guide the choice."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_task
    tasks = ["a"] * n_per_task + ["b"] * n_per_task
    configs = ["cheap()", "dear()"]
    raw = np.array([1e6, 4e6]) * rng.uniform(0.9, 1.1, (n, 2))
    p_ok = np.array([[0.9, 0.3] if t == "a" else [0.1, 0.9] for t in tasks])
    acc = (rng.random((n, 2)) < p_ok).astype(float)
    return Table("m", [f"{t}{i}" for i, t in enumerate(tasks)], [0] * n, [1] * n, np.full(n, 0.5),
                 np.full(n, 1e5), np.zeros(n), configs,
                 {c: {"strategy": c[:-2], "params": {}, "source": "run"} for c in configs},
                 acc, raw, raw.copy(), np.full((n, 2), np.nan), tasks=tasks if named else None)


def test_a_plan_per_task_chooses_each_tasks_own_configuration():
    table = two_task_table()
    plan = fit_plan(table)
    assert set(plan.by_task) == {"a", "b"}
    assert plan.for_task("a").choose(0.5, 5e6) == "cheap()"
    assert plan.for_task("b").choose(0.5, 5e6) == "dear()"
    assert plan.for_task("unknown task") is plan
    budgets = [1e6, 2.5e6, 4e6, 5e6]
    fixed = fixed_points(table)
    with_tasks = planner_headline(cross_validate(table, budgets), fixed)
    without = planner_headline(cross_validate(two_task_table(named=False), budgets), fixed)
    # one fixed configuration: cheap 50%, dear 60%; per task: about 90% at 2.5e6 FLOPs
    assert with_tasks["accuracy_gain"] >= 0.2, with_tasks
    assert without["accuracy_gain"] <= 0.05, without
    best = max(per_task_fixed_points(table), key=lambda p: p.accuracy)
    assert best.config == "a:cheap() + b:dear()" and best.accuracy >= 0.8


def test_a_plan_per_task_survives_save_and_load(tmp_path):
    plan = fit_plan(two_task_table())
    back = Plan.load(plan.save(tmp_path / "plan.json"))
    assert back.for_task("b").blind == plan.for_task("b").blind
    assert back.for_task("a").edges == plan.for_task("a").edges
    assert back.with_latency_budget(None).for_task("a").blind == plan.for_task("a").blind


def test_whether_to_probe_is_chosen_per_task():
    """Task "a": the probe's vote answers easy problems and tells which are hard; task "b":
    the probe says nothing and costs as much as the configuration that answers. Probing pays
    for "a" only, and the planner probes "a" and not "b"."""
    from ttscale.planner.plan import choose_modes

    a = synthetic_table(60, seed=3)
    n = len(a)
    configs = a.configs
    j = configs.index("majority(n=4)")
    acc_b = np.zeros((n, len(configs)))
    acc_b[:, j] = 1.0  # majority(n=4) answers every "b" problem; nothing else does
    raw_b = np.tile([4e6, 16e6, 40e6], (n, 1))
    b = Table("m", [f"b{i}" for i in range(n)], [0] * n, [1] * n, np.full(n, 0.5), np.full(n, 4e6),
              np.zeros(n), configs, a.strategies, acc_b, raw_b, raw_b.copy(), np.full((n, 3), np.nan),
              tasks=["b"] * n)
    both = Table("m", a.problems + b.problems, [0] * 2 * n, [1] * 2 * n,
                 np.concatenate([a.difficulty, b.difficulty]), np.concatenate([a.probe_cost, b.probe_cost]),
                 np.concatenate([a.probe_acc, b.probe_acc]), configs, a.strategies,
                 np.concatenate([a.acc, b.acc]), np.concatenate([a.raw, b.raw]),
                 np.concatenate([a.extra, b.extra]), np.concatenate([a.used, b.used]),
                 tasks=["a"] * n + ["b"] * n)
    plan = fit_plan(both)
    plans = [plan.for_task(t) for t in both.tasks]
    bins = [p.bin_of(d) for p, d in zip(plans, both.difficulty)]
    modes = choose_modes(plans, bins, both.tasks, 2 * n * 6e6)
    assert modes == {"a": "probe", "b": "blind"}
    spend = simulate(plan, both, 2 * n * 6e6)
    assert spend.mode == "a:probe,b:blind" and spend.flops.sum() <= 2 * n * 6e6 + 1e-6


def test_online_planner_answers_with_the_plan_of_the_problems_task(random_model_dir):
    """A plan whose pooled frontier answers greedily and whose countdown plan votes: countdown
    problems are answered by the countdown plan, arith problems (no plan of their own) by the
    pooled one."""
    from ttscale.engine import load_generator
    from ttscale.planner.solve import solve_with_plan
    from ttscale.tasks import get_task

    gen = load_generator(random_model_dir)
    strategies = {"greedy()": {"strategy": "greedy", "params": {}, "source": "run"},
                  "majority(n=3)": {"strategy": "majority", "params": {"n": 3}, "source": "run"}}
    sampling = {"temperature": 1.0, "max_tokens": 16}

    def plan_with(config: str) -> Plan:  # never probes: the probe costs more than any budget here
        return Plan("random", 4, 1e15, [], [[Option("probe", 0, 0.0)]],
                    [Option("none", 0, 0), Option(config, 1.0, 0.5)], strategies, sampling,
                    {"bin_sizes": [4]})

    plan = plan_with("greedy()")
    plan.by_task = {"countdown": plan_with("majority(n=3)")}
    for name, want in (("countdown", "majority(n=3)"), ("arith", "greedy()")):
        task = get_task(name)
        run = solve_with_plan(task.problems("test", 2, 2, seed=0), task, gen, plan, 1e12)
        assert run.mode == "blind" and [a.config for a in run.answers] == [want, want]


def test_whether_to_probe_is_decided_on_held_out_problems():
    """A probe that says nothing: difficulty is noise and 100 configurations are coin flips.
    In-sample, each bin's best coin looks better than the pooled best, so comparing the
    expected allocations probes; on held-out problems the bins' picks are coin flips that
    also paid for the probe (which leaves some problems without a configuration), and the
    plan answers blind."""
    from dataclasses import replace

    from ttscale.planner.plan import choose_modes

    rng = np.random.default_rng(5)
    n, j = 120, 100
    configs = [f"c{i}()" for i in range(j)]
    raw = np.full((n, j), 4e6)
    table = Table("m", [f"p{i}" for i in range(n)], [0] * n, [1] * n,
                  rng.choice([0.0, 0.25, 0.5, 0.75], size=n), np.full(n, 1e6), np.zeros(n), configs,
                  {c: {"strategy": c[:-2], "params": {}, "source": "run"} for c in configs},
                  (rng.random((n, j)) < 0.5).astype(float), raw, raw.copy(), np.full((n, j), np.nan))
    plan = fit_plan(table)
    budget = n * 4.5e6
    bins = [plan.bin_of(d) for d in table.difficulty]
    in_sample = replace(plan, probe_gain=[])
    assert choose_modes([in_sample] * n, bins, ["t"] * n, budget) == {"t": "probe"}
    assert plan.prefers_probe(4.5e6) is False
    assert choose_modes([plan] * n, bins, ["t"] * n, budget) == {"t": "blind"}
    assert Plan.from_dict(plan.to_dict()).probe_gain == plan.probe_gain


def test_an_overrun_is_covered_where_it_costs_least_accuracy_per_flop():
    """Two kinds of problems: on one the dear option buys 40 points for 9 FLOPs, on the other
    6 points for 9. The first problem overruns; the upgrade taken back is the cheap-to-lose
    one, even though a problem of the other kind runs next."""
    from ttscale.planner.allocate import NO_ANSWER, Ledger

    steep = [Option(NO_ANSWER, 0.0, 0.0), Option("short", 1.0, 0.3), Option("long", 10.0, 0.7)]
    flat = [Option(NO_ANSWER, 0.0, 0.0), Option("one", 1.0, 0.5), Option("four", 10.0, 0.56)]
    ledger = Ledger([steep, steep, flat], budget=30.0, ranks=[0, 1, 2])
    assert ledger.choice == [2, 2, 2]
    k0 = ledger.upgrade(0)
    ledger.charge(0, 19.0)  # nine FLOPs over its allotment
    assert (k0, ledger.upgrade(1)) == (2, 2)  # the next problem keeps its long chain ...
    assert ledger.choice[2] == 1  # ... the flat problem gave its upgrade back
    ledger.charge(1, 10.0)
    ledger.upgrade(2)
    ledger.charge(2, 1.0)
    assert ledger.spent <= 30.0


def test_a_stopping_rule_cut_short_by_the_budget_answers_with_the_samples_it_drew():
    """Offline, a stopping rule whose samples would overrun what a problem may spend answers
    with its own vote over the samples that fit (the same first samples as the fixed-n vote
    of the grid), instead of nothing; online, `_continue_sampling` keeps what it drew."""
    from ttscale.planner.plan import cut_columns, simulate

    configs = ["adaptive_consistency(n=16,threshold=0.95)", "majority(n=2)", "majority(n=4)"]
    strategies = {configs[0]: {"strategy": "adaptive_consistency",
                               "params": {"n": 16, "threshold": 0.95}, "source": "samples"},
                  configs[1]: {"strategy": "majority", "params": {"n": 2}, "source": "samples"},
                  configs[2]: {"strategy": "majority", "params": {"n": 4}, "source": "samples"}}
    n = 4
    raw = np.array([[40.0, 2.0, 4.0], [2.0, 2.0, 4.0], [2.0, 2.0, 4.0], [2.0, 2.0, 4.0]])
    acc = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    table = Table("m", [f"p{i}" for i in range(n)], [0] * n, [1] * n, np.zeros(n), np.ones(n),
                  np.zeros(n), configs, strategies, acc, raw, raw.copy(), np.full((n, 3), np.nan))
    assert cut_columns(table, 0) == [2, 1] and cut_columns(table, 1) == []
    plan = Plan("m", 4, 1.0, [], [], [Option("none", 0.0, 0.0), Option(configs[0], 5.5, 1.0)],
                strategies, {}, {"bin_sizes": []})
    spend = simulate(plan, table, 4 * 5.5, mode="blind")
    assert spend.flops.sum() <= 22.0
    # problem 0 needs 40 FLOPs where it may spend at most 21.5: its rule answers with the
    # largest vote of the grid that fits (4 samples, right; 2 samples would be wrong)
    assert spend.choice[0] == f"{configs[0]} (cut to majority(n=4))"
    assert spend.correct.tolist() == [1.0, 1.0, 1.0, 1.0] and spend.flops[0] == 4.0


def test_online_stopping_rule_cut_short_by_the_budget_keeps_what_it_drew(random_model_dir):
    """Adaptive-Consistency that the budget guard stops after a few samples answers with
    those samples (as `simulate` assumes) instead of discarding what was paid for."""
    from ttscale.engine import load_generator
    from ttscale.planner.allocate import BudgetExhausted, BudgetGuard
    from ttscale.planner.solve import _continue_sampling
    from ttscale.tasks import get_task
    from ttscale.types import GenerationRequest, SamplingParams

    gen = load_generator(random_model_dir)
    task = get_task("countdown")
    problem = task.problems("test", 2, 1, seed=0)[0]
    cfg = {"strategy": "adaptive_consistency", "params": {"n": 16, "threshold": 0.999},
           "source": "samples"}
    plan = Plan("random", 4, 0.0, [], [], [], {"ac": cfg}, {"temperature": 1.0, "max_tokens": 24},
                {"bin_sizes": []})
    with pytest.raises(BudgetExhausted):  # nothing drawn yet: nothing to answer with
        _continue_sampling(plan, cfg, problem, task, BudgetGuard(gen, 0.0), None, None, 0)
    worst = BudgetGuard(gen, 0.0).worst_case(
        [GenerationRequest(problem.prompt, SamplingParams(n=1, max_tokens=24))])
    guard = BudgetGuard(gen, 3.5 * worst)  # room for three draws of one sample, at worst
    ss = _continue_sampling(plan, cfg, problem, task, guard, None, None, 0)
    assert 3 <= ss.n < 16 and guard.spent <= 3.5 * worst


def test_online_long_mode_run_gets_room_for_long_chains(random_model_dir):
    """A strategy the plan runs for real at effort "high" is asked in the long mode with the
    long-mode token limit, as the sweep measured it (it was cut at the short limit, 96 tokens,
    and answered nothing)."""
    from ttscale.engine import load_generator
    from ttscale.planner.solve import solve_with_plan
    from ttscale.tasks import get_task
    from ttscale.tasks.effort import LONG_MAX_TOKENS, effort_of

    inner = load_generator(random_model_dir)
    asked = []

    class Recording:
        def __getattr__(self, name):
            return getattr(inner, name)

        def generate(self, requests):
            asked.extend((effort_of(r.prompt), r.params.max_tokens) for r in requests)
            return inner.generate(requests)

    task = get_task("arith")
    problems = task.problems("test", 2, 2, seed=0)
    cfg = "greedy(effort=high)"
    plan = Plan("random", 4, 1e12, [], [], [Option("none", 0.0, 0.0), Option(cfg, 1e6, 0.5)],
                {cfg: {"strategy": "greedy", "params": {"effort": "high"}, "source": "run"}},
                {"temperature": 0.6, "max_tokens": 96}, {"bin_sizes": []})
    run = solve_with_plan(problems, task, Recording(), plan, 1e12)
    assert [a.config for a in run.answers] == [cfg, cfg]
    assert asked and all(a == ("high", LONG_MAX_TOKENS) for a in asked), asked


def test_online_option_refused_before_spending_falls_back_to_a_cheaper_one(random_model_dir):
    """The plan allots a long-mode chain, but its worst case (768 tokens) does not fit what is
    left of the budget; the problem is answered by the cheaper short chain that fits, not left
    without an answer."""
    from ttscale.engine import load_generator
    from ttscale.planner.allocate import BudgetGuard
    from ttscale.planner.solve import solve_with_plan
    from ttscale.tasks import get_task
    from ttscale.types import GenerationRequest, SamplingParams

    gen = load_generator(random_model_dir)
    task = get_task("arith")
    problem = task.problems("test", 2, 1, seed=0)[0]
    short_worst = BudgetGuard(gen, 0.0).worst_case(
        [GenerationRequest(problem.prompt, SamplingParams(n=1, max_tokens=96))])
    long_cfg, short_cfg = "greedy(effort=high)", "greedy()"
    plan = Plan("random", 4, 1e15, [], [],
                [Option("none", 0.0, 0.0), Option(short_cfg, 1.0, 0.3), Option(long_cfg, 2.0, 0.7)],
                {long_cfg: {"strategy": "greedy", "params": {"effort": "high"}, "source": "run"},
                 short_cfg: {"strategy": "greedy", "params": {}, "source": "run"}},
                {"temperature": 0.6, "max_tokens": 96}, {"bin_sizes": []})
    budget = 2 * short_worst  # far below a long chain's worst case
    run = solve_with_plan([problem], task, gen, plan, budget)
    assert run.answers[0].config == f"{long_cfg} (refused; {short_cfg})"
    assert 0 < run.spent <= budget
