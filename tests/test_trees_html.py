"""Search trees as JSON and as one self-contained HTML page."""
from __future__ import annotations

import json
import re
import sys

import pytest

from ttscale.errors import TTScaleError
from ttscale.eval.trees import render_tree_html
from ttscale.rewards.oracle import OracleScorer
from ttscale.strategies import solve
from ttscale.strategies.tree import Tree
from ttscale.tasks import get_task

from test_tree_search import TINY, ScriptedGenerator, _problem

ARITH = get_task("arith")


@pytest.fixture()
def mcts_solution():
    p = _problem("2+3", "5")
    gen = ScriptedGenerator(p.prompt, {**TINY, "": ["=5", "=6 <script>x</script>"],
                                       "=6 <script>x</script>\n": ["A: 6"]})
    return solve(p, ARITH, gen, "mcts", {"iterations": 3, "width": 2, "seed": None}, OracleScorer(ARITH))


def test_tree_json_round_trips(mcts_solution, tmp_path):
    d = mcts_solution.tree
    json.dumps(d)  # JSON-able as it is
    t = Tree.from_dict(json.loads(json.dumps(d)))
    assert t.to_dict() == d
    t.save(tmp_path / "t.json")
    assert Tree.load(tmp_path / "t.json").to_dict() == d
    (tmp_path / "s.json").write_text(json.dumps(mcts_solution.to_dict()))  # a saved Solution
    assert Tree.load(tmp_path / "s.json").to_dict() == d
    assert t.text(t.nodes[t.chosen[-1]]) == mcts_solution.text


def test_html_is_self_contained_and_highlights_the_chosen_path(mcts_solution):
    page = render_tree_html(mcts_solution.tree)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "http" not in page and "<link" not in page and "@import" not in page
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page  # step text is escaped
    t = Tree.from_dict(mcts_solution.tree)
    for nid in t.chosen[1:]:
        li = re.search(rf'<li class="([^"]*)" id="n{nid}">', page)
        assert li and "chosen" in li.group(1)
    unchosen = [n.id for n in t.nodes if n.id not in t.chosen]
    assert unchosen and all("chosen" not in re.search(rf'<li class="([^"]*)" id="n{i}">', page).group(1)
                            for i in unchosen)
    assert f"N {t.root.visits}" in page and "score 1.000" in page


def _cli(args, monkeypatch) -> int:
    from ttscale.cli import main

    monkeypatch.setattr(sys, "argv", ["ttscale", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_tree_command_writes_the_page(mcts_solution, tmp_path, monkeypatch, capsys):
    src = tmp_path / "tree.json"
    src.write_text(json.dumps(mcts_solution.tree))
    out = tmp_path / "page.html"
    assert _cli(["tree", str(src), "--out", str(out)], monkeypatch) == 0
    assert "=5" in out.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": []}')
    assert _cli(["tree", str(bad)], monkeypatch) == 2
    assert "not a ttscale tree" in capsys.readouterr().err


def test_loading_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(TTScaleError, match="does not exist"):
        Tree.load(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(TTScaleError, match="not JSON"):
        Tree.load(tmp_path / "x.json")


def test_solve_saves_each_search_tree_as_json_and_html(tmp_path):
    """`ttscale solve --trees-out DIR` (run_solve) leaves one loadable tree and page per problem."""
    from ttscale.eval.solve import run_solve
    from ttscale.strategies.tree import Tree

    out = run_solve("ttscale-tiny", task="countdown", level=2, num_problems=2,
                    strategy="beam_search", params={"n": 4, "width": 2}, scorer="oracle",
                    trees_out=tmp_path)
    pages = sorted(tmp_path.glob("*.html"))
    assert len(pages) == out["num_problems"] == 2
    for page in pages:
        tree = Tree.load(page.with_suffix(".json"))
        assert len(tree.nodes) > 1
        assert "http" not in page.read_text()
