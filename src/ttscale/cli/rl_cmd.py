"""`ttscale train rl` (GRPO) and `ttscale train distill` (expert iteration): thin layers over
`ttscale.train.rl.train_rl` and `ttscale.train.distill.distill`."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ttscale.cli.app import train_app


def _command() -> str:
    return "ttscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _finish(out: Path, task: str, eval_problems: int, eval_n: int, split: str, effort: str = "low") -> None:
    """Evaluate the trained model on every level (training can also cost the untrained ones),
    write its card, print where it is and the table."""
    from ttscale.eval.evaluate import format_table
    from ttscale.train.rl import evaluate_levels, length_table, write_trained_card

    from ttscale.cli.train_cmd import _record_command

    _record_command(out)  # the card rewrites it; without one the lineage of a child still needs it
    print(f"wrote {out}")
    if eval_problems <= 0:
        return
    rows = [r for t in task.split(",") if t.strip()
            for r in evaluate_levels(out, t.strip(), None, split=split, num_problems=eval_problems, n=eval_n,
                                       effort=effort)]
    write_trained_card(out, rows, _command(), split)
    print(format_table(rows))
    print()
    print(length_table(rows))


@train_app.command("rl")
def rl(
    model: str = typer.Option(..., help="Starting policy: a shipped model name or a directory."),
    task: str = typer.Option(..., help="Task with an exact oracle: arith, countdown, a .jsonl file, "
                                       "or several separated by commas (arith,countdown)."),
    out: Path = typer.Option(..., help="Output model directory (a rerun resumes from its last checkpoint)."),
    length_penalty: float = typer.Option(0.0, help="Weight of the Kimi k1.5 length reward (0: off)."),
    steps: int = typer.Option(100, help="GRPO optimizer steps."),
    level: Optional[list[int]] = typer.Option(None, help="Training level (repeatable); default: 1 2 3."),
    num_generations: int = typer.Option(8, help="Samples per prompt (the group size)."),
    generation_batch_size: int = typer.Option(32, help="Completions per step (a multiple of num_generations)."),
    learning_rate: float = typer.Option(1e-4),
    beta: float = typer.Option(0.02, help="KL weight to the starting model (0: no reference, no KL log)."),
    partial_credit: float = typer.Option(0.0, help="Weight of step partial credit from the step oracle."),
    format_weight: float = typer.Option(0.1, help="Weight of the answer-format reward."),
    max_completion_length: int = typer.Option(96, help="Longest completion in tokens."),
    temperature: float = typer.Option(1.0, help="Sampling temperature of the groups."),
    num_iterations: int = typer.Option(1, help="Policy updates per generated batch (>1: the clip bites)."),
    scale_rewards: str = typer.Option("batch", help="Advantage scale: batch std, group std, or none."),
    rollout: str = typer.Option("engine", help="Who samples the groups: engine (ttscale's TorchEngine) "
                                               "or transformers (TRL's generate)."),
    resample_flat: int = typer.Option(0, help="Rounds of replacing all-right/all-wrong groups by fresh "
                                              "problems per step (engine rollout; 0: off)."),
    effort: str = typer.Option("low", help="Thinking mode of the prompts: low, high, or auto (the "
                                           "policy names its mode on the line after the question)."),
    learn: str = typer.Option("all", help="Tokens GRPO trains: all, or mode (only the mode line of "
                                          "--effort auto; chain tokens are not trained)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    eval_problems: int = typer.Option(50, help="Held-out problems per level for the card (0: no card)."),
    eval_n: int = typer.Option(16, help="Samples per problem for maj@n and pass@n in the card."),
    eval_split: str = typer.Option("heldout", help="Split of the card's problems."),
) -> None:
    """RL from verifiable rewards (GRPO) with an optional length penalty; writes a model and its card."""
    from ttscale.train.rewards import RewardConfig
    from ttscale.train.rl import RLConfig, RLRunError, train_rl

    cfg = RLConfig(task=task, levels=level or [1, 2, 3], steps=steps, num_generations=num_generations,
                   generation_batch_size=generation_batch_size, num_iterations=num_iterations,
                   max_completion_length=max_completion_length, temperature=temperature, scale_rewards=scale_rewards,
                   learning_rate=learning_rate, beta=beta, seed=seed, device=device, rollout=rollout,
                   resample_flat=resample_flat, effort=effort, learn=learn,
                   rewards=RewardConfig(format=format_weight, partial=partial_credit,
                                        length_penalty=length_penalty))
    try:
        summary = train_rl(cfg, model, out)
    except RLRunError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    last = summary["last_steps"]
    print(f"{summary['steps']} steps in {summary['wall_s'] / 60:.1f} min; last 10 steps: reward "
          f"{last['reward_mean']}, accuracy {last['accuracy']}, length {last['mean_length']}, "
          f"zero-std groups {last['frac_zero_std']}, KL {last['kl']}")
    _finish(out, task, eval_problems, eval_n, eval_split, effort)


@train_app.command("distill")
def distill(
    model: str = typer.Option(..., help="Starting policy: a shipped model name or a directory."),
    task: str = typer.Option(..., help="Built-in task: arith, countdown, or both separated by a comma "
                                       "(arith,countdown: problems spread over tasks and levels)."),
    out: Path = typer.Option(..., help="Output model directory (finished rounds are kept and skipped on a rerun)."),
    rounds: int = typer.Option(2, help="Expert-iteration rounds."),
    level: Optional[list[int]] = typer.Option(None, help="Training level (repeatable); default: 1-5."),
    strategy: str = typer.Option("beam_search", help="Search that finds solutions: beam_search or mcts."),
    scorer: str = typer.Option("oracle", help="Scorer guiding the search: oracle or prm."),
    scorer_model: Optional[str] = typer.Option(None, help="PRM directory (default: models/ttscale-prm)."),
    problems_per_round: int = typer.Option(200, help="Training problems searched per round (all levels)."),
    sft_steps: int = typer.Option(150, help="Fine-tuning steps per round."),
    learning_rate: float = typer.Option(1e-4, help="Peak fine-tuning learning rate."),
    effort: str = typer.Option("low", help="Thinking mode of every problem searched, fine-tuned on and "
                                           "evaluated: low, or high (the long, step-checked chains)."),
    block: Optional[int] = typer.Option(None, help="Tokens per fine-tuning sequence; default 256, or 512 "
                                                   "with --effort high (long chains reach about 500)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    eval_problems: int = typer.Option(50, help="Held-out problems per level for the card (0: no card)."),
    eval_n: int = typer.Option(16, help="Samples per problem for maj@n and pass@n in the card."),
    eval_split: str = typer.Option("heldout", help="Split of the card's problems."),
) -> None:
    """Distil tree search into the policy by expert iteration (ReST-EM); writes a model and its card."""
    from ttscale.train.distill import DistillConfig, distill as run

    cfg = DistillConfig(task=task, levels=level or [1, 2, 3, 4, 5], rounds=rounds, strategy=strategy,
                        scorer=scorer, scorer_model=scorer_model, problems_per_round=problems_per_round,
                        sft_steps=sft_steps, learning_rate=learning_rate, seed=seed,
                        device=device, effort=effort, block=block)
    summary = run(cfg, model, out)
    for r in summary["rounds"]:
        if r["round"] == 0:
            print(f"round 0 (parent): held-out greedy accuracy {r['accuracy']:.1%}{_per_task(r)}")
            continue
        print(f"round {r['round']}: solved {r['solved']:.1%} of {r['problems']} training problems "
              f"({r['kept']} verified solutions kept); policy greedy accuracy {r['accuracy']:.1%}{_per_task(r)}")
    _finish(out, task, eval_problems, eval_n, eval_split, effort)


def _per_task(row: dict) -> str:
    """` (arith 40.0%, countdown 60.0%)`: a round's accuracy per task, when it has several."""
    acc = row.get("accuracy_per_task_level", {})
    if len(acc) < 2:
        return ""
    return " (" + ", ".join(f"{t} {sum(a.values()) / len(a):.1%}" for t, a in acc.items()) + ")"
