"""`ttscale bench serve`: a short real run against a loopback server; its results go to --out
(the working directory by default), never into the installed package or the source tree."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ttscale

PACKAGE = Path(ttscale.__file__).resolve().parent


def _bench(monkeypatch, capsys, model, *args):
    from ttscale.cli import main

    monkeypatch.setattr(sys, "argv", ["ttscale", "bench", "serve", "--model", model, "--clients",
                                      "2", "--seconds", "1", "--max-tokens", "4", "--json", *args])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    return json.loads(capsys.readouterr().out)


def _outside_out() -> dict[str, float]:
    """Where a run could land outside --out: inside the package, or in a docs/ beside it (the
    checkout's docs/benchmarks.md, or site-packages/docs/ once installed); path -> mtime."""
    places = [*PACKAGE.rglob("benchmarks.md"), *PACKAGE.rglob("bench-serve-*.json"),
              PACKAGE.parent / "docs" / "benchmarks.md", PACKAGE.parents[1] / "docs" / "benchmarks.md"]
    return {str(p): p.stat().st_mtime for p in places if p.exists()}


def test_results_go_to_the_working_directory_or_out(random_model_dir, tmp_path, monkeypatch,
                                                    capsys):
    before = _outside_out()
    monkeypatch.chdir(tmp_path)
    r = _bench(monkeypatch, capsys, random_model_dir, "--note", "test run")
    assert r["requests"] > 0 and r["server_5xx"] == 0
    assert r["left_queued"] == 0 and r["left_running"] == 0
    assert json.loads((tmp_path / "bench-serve-load.json").read_text()) == r
    doc = (tmp_path / "benchmarks.md").read_text()
    assert doc.startswith("# Benchmarks") and "## serve: `ttscale bench serve" in doc
    assert "test run" in doc

    _bench(monkeypatch, capsys, random_model_dir, "--out", str(tmp_path / "runs"))
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"bench-serve-load.json",
                                                               "benchmarks.md"}
    _bench(monkeypatch, capsys, random_model_dir, "--out", str(tmp_path / "none"), "--no-doc")
    assert not (tmp_path / "none").exists()
    assert _outside_out() == before
