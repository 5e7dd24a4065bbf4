"""Issue 14's headline on several sets of problems: how much it moves with the problems drawn.

For each seed, the default main job on the problems that seed draws (`ttscale sweep --seed S`;
a set already in `--out-dir` is reused, a killed one resumes), then its headline re-derived
three ways from the same records: as the main job reports it; with the confident-consistency
records dropped (the grid before stop 28); both with every fold seed the report prints. One
row per set, the table of docs/results.md ("four sets of problems").

    python benchmarks/problem_sets.py --seeds 0,1,2,3 --out-dir runs/sets --threads 1
    python benchmarks/problem_sets.py --grid-model ttscale-small-long --out-dir runs/sets-long
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ttscale.eval.report import analyze


def run_set(seed: int, out: Path, threads: int, grid_model: str | None = None) -> None:
    """The default sweep on seed `seed`'s problems (resumed when `out` holds part of it), with
    `grid_model` running its grid when given."""
    code = "import sys; from ttscale.cli import main; sys.argv[0] = 'ttscale'; main()"
    cmd = [sys.executable, "-c", code, "sweep", "--seed", str(seed), "--out", str(out),
           "--threads", str(threads), "--no-report", "--json"]
    if grid_model:
        cmd += ["--grid-model", grid_model]
    if (out / "results.jsonl").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def without_rule(src: Path, dst: Path, rule: str) -> Path:
    """A copy of a results directory without `rule`'s records (the grid without that rule)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("samples.jsonl", "models.json", "sweep.json"):
        shutil.copy(src / name, dst / name)
    cfg = json.loads((dst / "sweep.json").read_text())
    cfg["rules"] = [r for r in cfg.get("rules", []) if r != rule]
    (dst / "sweep.json").write_text(json.dumps(cfg))
    with (src / "results.jsonl").open() as f, (dst / "results.jsonl").open("w") as g:
        for line in f:
            if line.strip() and json.loads(line).get("strategy") != rule:
                g.write(line)
    return dst


def figures(results: Path) -> dict:
    h = analyze(results)["headline"]
    p, ad = h["planner_vs_best_fixed"], h["adaptive_stopping"]
    pick = lambda d: (d or {}).get("flops_saving")  # noqa: E731
    return {"planner_held_out": p.get("flops_saving"),
            "planner_by_fold_seed": p.get("flops_saving_by_fold_seed"),
            "planner_hindsight": pick(h.get("planner_vs_best_fixed_hindsight")),
            "planner_per_task": pick(h.get("planner_vs_best_fixed_per_task")),
            "adaptive_rule": ad.get("rule"), "adaptive_stopping_saving": ad.get("saving"),
            "adaptive_by_fold_seed": ad.get("saving_by_fold_seed"),
            "adaptive_by_setting": h.get("adaptive_stopping_by_setting"),
            "small_vs_large": _small_vs_large(h.get("small_search_vs_large_greedy"))}


def _small_vs_large(s: dict | None) -> dict | None:
    """The small model's best fixed configuration and its planner, both held out and within the
    large model's greedy FLOPs, against that greedy accuracy; per level the planner's margin."""
    if not s:
        return None
    return {"small_model": s["small_model"], "fixed": s["small_accuracy"],
            "planner": (s.get("planner") or {}).get("accuracy"), "large": s["large_accuracy"],
            "planner_minus_large_by_level": {
                r["level"]: r["planner"]["accuracy"] - r["large_accuracy"]
                for r in s["per_level"] if r.get("planner")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3", help="Problem seeds, comma-separated.")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/sets"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid-model", default=None,
                    help="The model that runs the default's grid (default: the default's).")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected integers separated by commas, e.g. 0,1,2,3")
    for seed in seeds:
        out = args.out_dir / f"seed{seed}"
        run_set(seed, out, args.threads, args.grid_model)
        row = {"seed": seed, **figures(out),
               "without_confident": figures(without_rule(out, args.out_dir / f"seed{seed}-noconf",
                                                         "confident_consistency"))}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
