"""`pip install .` as a wheel: the shipped models travel as package data, and the installed
package finds them without the source tree (no path into the repository): `models`, `eval` and
`sweep` run from it in a directory of the user's."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_the_models_and_works_outside_the_source_tree(tmp_path):
    repo = tmp_path / "repo"  # a copy, so that setuptools' build/ stays out of the checkout
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "models", repo / "models",
                    ignore=shutil.ignore_patterns("checkpoint*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")], check=True,
                   capture_output=True)
    [wheel] = (tmp_path / "dist").glob("ttscale-*.whl")
    assert wheel.stat().st_size < 60 * 2**20
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p.name for p in (ROOT / "models").iterdir() if (p / "config.json").exists()]
    for model in shipped:
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            assert f"ttscale/shipped_models/{model}/{f}" in names
    assert not any(n.endswith(("train_log.jsonl", ".pt")) for n in names)

    site = tmp_path / "site"  # the wheel unpacked as pip would install it
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TTSCALE_MODELS_DIR")}
    work = tmp_path / "work"  # the user's directory: results go here, nowhere else
    work.mkdir()

    def ttscale(*args: str) -> dict:
        code = ("import sys; import ttscale; assert ttscale.__file__.startswith(sys.argv[1]); "
                "from ttscale.cli import main; sys.argv = ['ttscale', *sys.argv[2:]]; main()")
        out = subprocess.run([sys.executable, "-c", code, str(site), *args], cwd=work, check=True,
                             capture_output=True, text=True,
                             env={**env, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}).stdout
        return json.loads(out)

    models = ttscale("models", "--json")
    assert sorted(m["name"] for m in models) == sorted(shipped)
    assert all(Path(m["path"]).is_relative_to(site) for m in models)  # not the checkout
    row = ttscale("eval", "--model", "ttscale-tiny", "--task", "arith", "--level", "1",
                  "--num-problems", "2", "--n", "0", "--json")
    assert row["model"] == "ttscale-tiny" and 0 <= row["greedy_acc"] <= 1
    sweep = ttscale("sweep", "--model", "ttscale-tiny", "--task", "arith", "--levels", "1",
                    "--num-problems", "2", "--n-max", "2", "--ns", "1,2", "--replicates", "1",
                    "--strategies", "greedy", "--max-tokens", "16", "--out", "sw", "--no-report",
                    "--json")
    assert (work / sweep["results_dir"]).resolve() == (work / "sw").resolve() and sweep["frontier"]
    assert (work / "sw" / "results.jsonl").exists()
