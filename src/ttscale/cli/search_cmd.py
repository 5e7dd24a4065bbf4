"""`ttscale train prm` (learned PRM/ORM), `ttscale verifier-quality` (verifiers judged within
problems), `ttscale calibrate-cascade` (the cascade's threshold) and `ttscale tree` (a search tree
as a local HTML page)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ttscale.cli import options
from ttscale.cli.app import app, train_app


@train_app.command("prm")
def train_prm_cmd(
    out: Path = typer.Option(..., help="Output directory of the reward model (Hugging Face format)."),
    policy: str = typer.Option("ttscale-small", help="Policy whose weights start the backbone and "
                               "whose held-out samples judge it: name or directory."),
    sample_policy: Optional[list[str]] = typer.Option(None, help="Policy whose samples train it "
                                                      "(repeatable); default: --policy."),
    labels: str = typer.Option("oracle", help="oracle (exact step checks, no rollouts) or mc "
                               "(Math-Shepherd rollouts)."),
    task: Optional[list[str]] = typer.Option(None, help="Built-in task (repeatable); default: arith and countdown."),
    level: Optional[list[int]] = typer.Option(None, help="Level (repeatable); default: 2, 3, 4."),
    kind: str = typer.Option("prm", help="prm (a label per step) or orm (one label per solution)."),
    problems: int = typer.Option(16, help="Training problems per (task, level)."),
    samples: int = typer.Option(4, help="Solutions sampled per problem."),
    rollouts: int = typer.Option(4, help="Math-Shepherd rollouts per step (k)."),
    label: str = typer.Option("soft", help="With --labels mc: soft (fraction of rollouts right) or "
                              "hard (any right)."),
    heldout_problems: int = typer.Option(8, help="Held-out problems per (task, level) for the card."),
    heldout_samples: int = typer.Option(16, help="Samples per held-out problem (within-problem AUROC)."),
    reader: str = typer.Option("head", help="head (train a token-classification head) or lm-check "
                               "(a checking LM's gaps to each token written, a fitted logistic head)."),
    checker: Optional[str] = typer.Option(None, help="With --reader lm-check: the checking LM "
                                          "(name or directory); default: --policy."),
    head_feature: Optional[list[str]] = typer.Option(None, help="With --reader lm-check: a "
                                                     "feature the head reads (repeatable: min_gap, "
                                                     "mean_gap, mean_logprob); default: all three."),
    init: str = typer.Option("policy", help="Backbone from the policy's weights, or scratch."),
    size: Optional[str] = typer.Option(None, help="With --init scratch: a family size."),
    steps: int = typer.Option(150, help="Optimizer steps."),
    batch_size: int = typer.Option(16, help="Solutions per step."),
    lr: float = typer.Option(1e-3, help="Peak learning rate."),
    temperature: float = typer.Option(1.0, help="Sampling temperature of rollouts and held-out samples."),
    sample_temperature: Optional[list[float]] = typer.Option(None, help="Temperature of training "
                                                             "samples (repeatable); default: --temperature."),
    effort: Optional[list[str]] = typer.Option(None, help="Effort of training samples, low or high "
                                               "(repeatable); default: low."),
    max_tokens: int = typer.Option(128, help="Longest sampled solution or rollout."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Train a reward model on policies' own samples, labelled by the step oracle or Math-Shepherd."""
    from ttscale.train.prm import PRMConfig, train_prm

    defaults = PRMConfig()
    cfg = PRMConfig(policy=policy, tasks=task or defaults.tasks, levels=level or defaults.levels,
                    kind=kind, problems=problems, samples=samples, rollouts=rollouts, label=label,
                    labels=labels, sample_policies=sample_policy or [], efforts=effort or defaults.efforts,
                    temperatures=sample_temperature or [], heldout_samples=heldout_samples,
                    heldout_problems=heldout_problems, reader=reader, checker=checker,
                    head_features=head_feature or [], init=init, size=size, steps=steps,
                    batch_size=batch_size, lr=lr, temperature=temperature, max_tokens=max_tokens,
                    seed=seed, device=device, threads=threads)
    command = "ttscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train_prm(cfg, out, command=command)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    m = summary["metrics"]
    print(f"saved {kind} to {out}: loss {summary['initial_loss']:.4f} -> {summary['final_loss']:.4f}, "
          f"{summary['wall_s']} s")
    for q in summary["quality"]:
        print(f"  {q['task']} L{q['level']} {q['effort']}: within-problem AUROC {q['within_problem_auroc']:.3f} "
              f"({q['mixed_problems']} problems), greedy {q['greedy_acc']:.3f}, best-of-{q['n']} "
              f"{q['best_of_n_acc']:.3f}")
    print(f"  pooled: step accuracy {m['step_accuracy']:.3f}, ProcessBench F1 {m['processbench_f1']:.3f}")


@app.command("verifier-quality")
def verifier_quality_cmd(
    scorer: list[str] = typer.Option(["prm"], "--scorer", help="prm, orm, likelihood, oracle or checker, "
                                     "optionally with an aggregate (prm:min); repeatable, all "
                                     "judged on the same samples."),
    model: str = typer.Option("ttscale-small", "--model", help="The policy that samples."),
    task: str = typer.Option("arith", "--task", help="arith or countdown."),
    level: int = typer.Option(3, "--level"),
    num_problems: int = typer.Option(200, "--num-problems"),
    n: int = typer.Option(16, "--n", help="Samples per problem."),
    temperature: float = typer.Option(1.0, "--temperature"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Tokens per sample; default "
                                             "128, or 768 with --effort high."),
    scorer_model: Optional[str] = typer.Option(None, "--scorer-model", help="PRM/ORM directory "
                                               "or name (default: the shipped one)."),
    split: str = typer.Option("test", "--split"),
    effort: str = options.EFFORT,
    samples_in: Optional[Path] = typer.Option(None, "--samples-in", help="Judge samples saved "
                                              "earlier instead of drawing new ones."),
    samples_out: Optional[Path] = typer.Option(None, "--samples-out", help="Save the samples."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """Judge verifiers where it matters: within-problem AUROC, best-of-n against greedy."""
    from ttscale.eval.verifier_quality import measure_verifiers
    from ttscale.tasks.effort import max_tokens_for

    max_tokens = max_tokens or max_tokens_for(effort, 128)
    rows = measure_verifiers(model, scorer, task, level, num_problems, n, temperature, max_tokens,
                             scorer_model, split, effort=effort, samples_in=samples_in,
                             samples_out=samples_out)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        w = r["within_problem_auroc"]
        print(f"{r['scorer']}:{r['aggregate']} {r['task']} L{r['level']}: within-problem AUROC "
              f"{w['auroc']:.3f} ({w['groups']} problems, {w['pairs']} pairs), first step "
              f"{r['step_auroc_first_step']['auroc']:.3f}, first error "
              f"{r['step_auroc_first_error']['auroc']:.3f}; greedy {r['greedy_acc']:.3f}, "
              f"best-of-{r['n']} {r['best_of_n_acc']:.3f}, pooled AUROC {r['pooled_auroc']:.3f}, "
              f"ProcessBench F1 {r['processbench_f1']:.3f}")


@app.command("calibrate-cascade")
def calibrate_cascade_cmd(
    out: Path = typer.Option(..., "--out", help="JSON file that receives the threshold (pass it "
                             "to the cascade as --param calibration=FILE)."),
    model: str = typer.Option("ttscale-small", "--model"),
    task: str = typer.Option("arith", "--task"),
    level: Optional[int] = typer.Option(None, "--level"),
    num_problems: int = typer.Option(50, "--num-problems"),
    split: str = typer.Option("heldout", "--split", help="train or heldout (never test)."),
    scorer: str = typer.Option("prm", "--scorer", help="oracle, prm, orm, self-certainty or checker."),
    scorer_model: Optional[str] = typer.Option(None, "--scorer-model"),
    aggregate: str = typer.Option("last", "--aggregate"),
    param: list[str] = typer.Option([], "--param", help="Cascade parameter as key=value "
                                    "(repeatable), e.g. --param n=8 --param escalate=best_of_n."),
) -> None:
    """Choose the cascade's threshold on train or held-out problems and write it to --out."""
    from ttscale.engine import load_generator
    from ttscale.eval.solve import parse_param_pairs
    from ttscale.rewards import get_scorer
    from ttscale.strategies import get_params
    from ttscale.strategies.cascade import calibrate_cascade, check_calibration_split
    from ttscale.tasks import get_task

    params = get_params("cascade", parse_param_pairs(param))
    check_calibration_split(split)
    task_obj = get_task(task)
    generator = load_generator(model)
    scorer_obj = get_scorer(scorer, task=task_obj, generator=generator, model=scorer_model,
                            aggregate=aggregate)
    rec = calibrate_cascade(task_obj, generator, scorer_obj, params, level, num_problems, split, out)
    print(f"threshold {rec['threshold']:.4g} on {rec['problems']} {split} problems: accuracy "
          f"{rec['accuracy']:.3f} (greedy {rec['greedy_accuracy']:.3f}, always escalated "
          f"{rec['always_escalated_accuracy']:.3f}), {rec['escalation_rate']:.0%} escalated -> {out}")


@app.command("tree")
def tree_cmd(
    file: Path = typer.Argument(..., help="A tree JSON (Solution.tree, or a saved Solution)."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write; default: FILE with .html."),
    title: Optional[str] = typer.Option(None, help="Page title."),
) -> None:
    """Render a search tree (beam, DVTS, MCTS, REBASE) as one self-contained HTML page."""
    from ttscale.eval.trees import write_tree_html
    from ttscale.strategies.tree import Tree

    path = write_tree_html(Tree.load(file), out or file.with_suffix(".html"), title)
    print(path)
