"""gradproj.pipeline.report on hand-built score tables and selections (no model)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import is_png, score_table
from scipy import stats

from gradproj.attribution.selection import Selection, overlap_coefficient, select
from gradproj.pipeline.report import write_report

IDS = [f"p{i}" for i in range(11)]
LOSSDIFF = [float(i) for i in range(11)]                    # quantiles 0.2, 0.8 → 2, 8
IRM = [5.0, 0.0, 9.0, 1.0, 10.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0]   # quantiles 0.1, 0.9 → 1, 9
IF = [0.3, -0.2, 0.5, 0.1, 0.9, -0.3, 0.4, 0.2, -0.1, 0.7, 0.6]
BANDS = {"lossdiff": (0.2, 0.8), "irm": (0.1, 0.9)}


def _info(sel: Selection, **extra) -> dict:
    """The info dict run_select hands to write_report."""
    info = dict(sel.to_dict(), keep=0.64, low_share=5 / 9, computed=[], kept_ids=sel.kept)
    info.update(extra)
    return info


def _lines(out) -> list[str]:
    return (out / "report.md").read_text().split("\n")


def test_lossdiff_irm_report_has_exact_rows_and_plots(tmp_path):
    table = score_table(IDS, lossdiff=LOSSDIFF, irm=IRM, **{"if": IF})
    sel = select(table, "lossdiff-irm", bands=BANDS)
    # by hand: LossDiff strictly in (2, 8) keeps p3..p7; IRM strictly in (1, 9) drops p3 (1)
    # and p4 (10)
    assert sel.kept == ["p5", "p6", "p7"]
    tif = select(table, "tif", 0.64)
    assert "p5" not in tif.kept and {"p6", "p7"} <= set(tif.kept)   # p5 has the lowest IF
    overlap = 2 / 3                                            # |{p6, p7}| / min(3, |TIF|)
    path = write_report(tmp_path, table, sel,
                        _info(sel, overlap_with_tif=overlap, computed=["warm-up θ", "scores"]))
    assert path == tmp_path / "report.md"
    lines = _lines(tmp_path)
    assert lines[:3] == ["# gradproj selection: lossdiff-irm", "",
                         "Kept **3 of 11** scorable pairs (27.3%; asked for keep 0.64)."]
    i = lines.index("| score | band (quantiles) | thresholds |")
    assert lines[i + 2:i + 5] == ["| lossdiff | (0.200, 0.800) | (2, 8) |",
                                  "| irm | (0.100, 0.900) | (1, 9) |", ""]
    i = lines.index("| drop reason | pairs |")
    # lossdiff ≤ 2: p0-p2, ≥ 8: p8-p10; irm ≤ 1: p1, p3; irm ≥ 9: p2, p4
    assert lines[i + 2:i + 7] == ["| irm:high | 2 |", "| irm:low | 2 |", "| lossdiff:high | 3 |",
                                  "| lossdiff:low | 3 |", ""]
    r = stats.pearsonr(LOSSDIFF, IRM).statistic
    assert f"Pearson r(LossDiff, IRM) = {r:.3f}" in lines
    assert "![LossDiff vs IRM](scatter.png)" in lines and "![IF histogram](if_hist.png)" in lines
    assert any(line.endswith(f"same keep: **{overlap:.3f}**") for line in lines)
    assert overlap == pytest.approx(overlap_coefficient(sel.kept, tif.kept))
    for name, col in (("lossdiff", LOSSDIFF), ("irm", IRM)):
        assert f"- Pearson r({name}, IF) = {stats.pearsonr(col, IF).statistic:.3f}" in lines
    assert "Computed in this run: warm-up θ, scores." in lines
    assert not any("--with-if" in line for line in lines)
    for png in ("scatter.png", "if_hist.png"):
        assert is_png(tmp_path / png), png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["if_hist.png", "report.md",
                                                           "scatter.png"]   # no temporary left


def test_report_without_if_says_so_and_draws_no_histogram(tmp_path):
    table = score_table(IDS, lossdiff=LOSSDIFF, irm=IRM)
    sel = select(table, "lossdiff-irm", bands=BANDS)
    write_report(tmp_path, table, sel, _info(sel))
    text = (tmp_path / "report.md").read_text()
    assert ("IF was not computed for this method (add `--with-if` for the IF histogram and the "
            "overlap with TIF).") in text
    assert "Influence" not in text and "Overlap" not in text and "Computed in this run" not in text
    assert not (tmp_path / "if_hist.png").exists() and is_png(tmp_path / "scatter.png")


def test_report_of_a_bandless_rule_uses_finite_rows_for_pearson(tmp_path):
    lossdiff = [1.0, 2.0, np.nan, 4.0, 3.0, 7.0]
    irm = [2.0, 1.0, 5.0, np.inf, 6.0, 8.0]
    table = score_table(["a", "b", "c", "d", "e", "f"], lossdiff=lossdiff, irm=irm)
    sel = select(table, "random", keep=0.5, seed=3)
    write_report(tmp_path, table, sel, _info(sel))
    lines = _lines(tmp_path)
    assert lines[2] == "Kept **3 of 6** scorable pairs (50.0%; asked for keep 0.64)."
    assert "| score | band (quantiles) | thresholds |" not in lines      # no band for random
    assert lines[lines.index("| drop reason | pairs |") + 2] == "| random | 3 |"
    r = stats.pearsonr([1.0, 2.0, 3.0, 7.0], [2.0, 1.0, 6.0, 8.0]).statistic   # rows a, b, e, f
    assert f"Pearson r(LossDiff, IRM) = {r:.3f}" in lines
    assert is_png(tmp_path / "scatter.png")


def test_report_without_lossdiff_has_no_scatter(tmp_path):
    table = score_table(IDS, irm=IRM)
    sel = select(table, "irm", keep=0.64)
    write_report(tmp_path, table, sel, _info(sel))
    text = (tmp_path / "report.md").read_text()
    assert "LossDiff vs IRM" not in text and not (tmp_path / "scatter.png").exists()
    assert f"Kept **{len(sel.kept)} of 11** scorable pairs" in text
    lo, hi = np.quantile(IRM, sel.bands["irm"])
    assert f"| irm | ({sel.bands['irm'][0]:.3f}, {sel.bands['irm'][1]:.3f}) | " \
           f"({lo:.4g}, {hi:.4g}) |" in text


def test_report_is_replaced_on_a_rerun(tmp_path):
    table = score_table(IDS, lossdiff=LOSSDIFF, irm=IRM)
    first = select(table, "lossdiff-irm", bands=BANDS)
    write_report(tmp_path, table, first, _info(first))
    again = select(table, "all")
    write_report(tmp_path, table, again, _info(again))
    lines = _lines(tmp_path)
    assert lines[:3] == ["# gradproj selection: all", "",
                         "Kept **11 of 11** scorable pairs (100.0%; asked for keep 0.64)."]
    assert "| drop reason | pairs |" not in lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "scatter.png"]


def test_unscorable_pairs_are_counted_and_named(tmp_path):
    irm = list(IRM)
    irm[2] = float("nan")
    table = score_table(IDS, irm=irm)
    table.meta["excluded"] = {IDS[4]: "response truncated away"}
    table.columns["irm"][4] = float("nan")
    sel = select(table, "irm", keep=0.64)
    write_report(tmp_path, table, sel, _info(sel))
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2] == (f"Kept **{len(sel.kept)} of 9** scorable pairs "
                        f"({len(sel.kept) / 9:.1%}; asked for keep 0.64).")
    assert ("11 pairs in the input; 2 could not be scored and are dropped (the keep fraction "
            "is over the scorable pairs):") in lines
    assert f"| {IDS[2]} | nonfinite:irm |" in lines
    assert f"| {IDS[4]} | excluded:response truncated away |" in lines


def test_group_table_counts_flips_removed_by_hand():
    from gradproj.core.data import pairs_from_records
    from gradproj.pipeline.groups import group_lines, group_table

    recs = [{"id": f"p{i}", "prompt": "q", "chosen": f"a{i}", "rejected": f"b{i}",
             "task": "x" if i < 6 else "y", "flipped": i in (0, 1, 6)} for i in range(9)]
    pairs = pairs_from_records(recs)
    table = score_table([p.id for p in pairs], irm=[float(i) for i in range(9)],
                        lossdiff=[1.0] * 8 + [float("nan")])
    sel = select(table, "all")
    sel.kept = ["p1", "p2", "p3", "p7"]
    rows = group_table(pairs, table, sel, "task")
    assert [r["group"] for r in rows] == ["x", "y"]
    x, y = rows
    assert (x["pairs"], x["kept"], x["flipped"], x["flips_removed"]) == (6, 3, 2, 0.5)
    assert (y["pairs"], y["kept"], y["flipped"], y["flips_removed"]) == (3, 1, 1, 1.0)
    assert x["mean_irm"] == pytest.approx(2.5) and y["mean_lossdiff"] == pytest.approx(1.0)
    lines = group_lines(rows, "task")
    assert lines[0] == ("| task | pairs | kept | kept share | mean lossdiff | mean irm | "
                        "flipped | flips removed |")
    assert lines[2] == "| x | 6 | 3 | 0.5 | 1 | 2.5 | 2 | 0.5 |"

