"""The calibration checks flag exactly the cells that break the family's criteria."""
from ttscale.eval.calibration import check_calibration, format_findings

MODELS = ["s", "m", "l"]
# greedy / pass@16 per level 1-5 for each model: calibrated as the criteria ask
GOOD = {"s": ([50, 30, 20, 10, 5], [90, 60, 50, 30, 10]),
        "m": ([80, 50, 40, 20, 8], [99, 80, 70, 50, 20]),
        "l": ([95, 70, 60, 40, 20], [100, 90, 85, 70, 40])}


def _rows(table):
    return [{"model": m, "task": "arith", "level": lv + 1, "n": 16, "greedy_acc": g[lv] / 100,
             "pass_at_n": p[lv] / 100} for m, (g, p) in table.items() for lv in range(5)]


def _failing(table):
    return {(f.criterion, f.level) for f in check_calibration(_rows(table), MODELS) if not f.ok}


def test_a_calibrated_family_passes_every_check():
    findings = check_calibration(_rows(GOOD), MODELS)
    assert findings and all(f.ok for f in findings)
    assert "all" in format_findings(findings)


def test_each_broken_criterion_is_flagged_at_its_cell():
    table = {m: (list(g), list(p)) for m, (g, p) in GOOD.items()}
    table["l"][0][0] = 85          # largest model below 90% at level 1
    table["l"][0][3] = 75          # ... and its accuracy rises from level 3 to level 4
    table["l"][1][3] = 77          # pass@16 only 2 points above greedy at level 4
    table["m"][0][4] = 4           # medium worse than small at level 5
    assert _failing(table) == {("level1", 1), ("falls", 4), ("room", 4), ("order", 5)}
    assert "4 of" in format_findings(check_calibration(_rows(table), MODELS))


def test_ties_are_not_better():
    table = {m: (list(g), list(p)) for m, (g, p) in GOOD.items()}
    table["l"][0][0] = table["m"][0][0] = 100
    assert ("order", 1) in _failing(table)


def test_a_model_without_rows_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="xl"):
        check_calibration(_rows(GOOD), MODELS + ["xl"])


def test_a_card_run_at_high_effort_adds_its_rows_beside_the_short_mode_ones(tmp_path):
    import json

    from ttscale.eval.card import write_card
    from ttscale.eval.evaluate import EvalResult

    def row(level, effort, acc):
        return EvalResult("m", "arith", level, 200, 16, acc, acc, acc, 30.0, 1.0, effort)

    write_card(tmp_path, [row(1, "low", 0.5), row(2, "low", 0.3)], "ttscale eval --model m")
    write_card(tmp_path, [row(2, "high", 0.8)], "ttscale eval --model m --effort high")
    write_card(tmp_path, [row(1, "low", 0.6)], "ttscale eval --model m")  # a re-run replaces its cell
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["level"], r["effort"], r["greedy_acc"]) for r in rows] == [(1, "low", 0.6), (2, "low", 0.3),
                                                                           (2, "high", 0.8)]
    assert "| high |" in (tmp_path / "README.md").read_text()
    # the checks read the short mode only: the long-mode row does not count as level 2's figure
    findings = check_calibration(rows, ["m"], top_level1=0.55)
    assert {(f.criterion, f.level, f.ok) for f in findings} >= {("level1", 1, True), ("falls", 2, True)}
