"""gradproj.pipeline.compare on hand-built score tables and run folders (no model)."""

from __future__ import annotations

import ast
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import run_folder, score_table
from scipy import stats

from gradproj.core.errors import GradprojError
from gradproj.pipeline.compare import compare_dirs, compare_tables, pearson, spearman

ROOT = Path(__file__).resolve().parents[1]


def test_spearman_averages_tied_ranks():
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): r = 4.5 / sqrt(4.5 · 5) = sqrt(0.9)
    assert spearman(np.array([1.0, 2, 2, 4]), np.array([10.0, 30, 20, 40])) == \
        pytest.approx(math.sqrt(0.9), abs=1e-15)
    assert spearman(np.array([3.0, 1, 2]), np.array([30.0, 10, 20])) == pytest.approx(1.0)
    assert spearman(np.array([3.0, 1, 2]), np.array([-30.0, -10, -20])) == pytest.approx(-1.0)


def test_spearman_and_pearson_equal_scipy_on_tied_data():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 50).astype(float)          # many ties
    b = np.round(a + rng.normal(size=50), 1)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)


def test_constant_score_gives_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman(np.ones(4), np.arange(4.0)))
        assert math.isnan(pearson(np.arange(4.0), np.full(4, 2.0)))


def test_compare_tables_aligns_rows_by_pair_id():
    a = score_table(["p0", "p1", "p2", "p3", "p4", "only_a"],
                    irm=[0.5, -1.0, 2.0, 0.1, 3.0, 9.0], loss_theta=[1, 2, 3, 4, 5, 6],
                    only_in_a=[0, 0, 0, 0, 0, 0])
    b = score_table(["p4", "only_b", "p2", "p0", "p3", "p1"],
                    irm=[2.5, 7.0, 1.0, 0.7, 1.5, -3.0], loss_theta=[2, 1, 4, 3, 6, 5])
    got = compare_tables(a, b)
    assert got["n_common"] == 5
    assert set(got["scores"]) == {"irm", "loss_theta"}          # shared columns only
    x = np.array([0.5, -1.0, 2.0, 0.1, 3.0])                   # p0..p4 in a
    y = np.array([0.7, -3.0, 1.0, 1.5, 2.5])                   # the same pairs in b
    irm = got["scores"]["irm"]
    assert irm["n"] == 5
    assert irm["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert irm["spearman"] == pytest.approx(1 - 6 * 6 / (5 * 24))   # ranks 3,1,4,2,5 vs 2,1,3,4,5
    assert irm["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    # loss_theta: a = 1..5, b = 3,5,4,6,2 → ranks 1..5 vs 2,4,3,5,1: ρ = 1 − 6·Σd²/(n(n²−1))
    d2 = sum((r - s) ** 2 for r, s in zip([1, 2, 3, 4, 5], [2, 4, 3, 5, 1]))
    assert got["scores"]["loss_theta"]["spearman"] == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert "helpful_a_harmful_b" not in got["scores"]["loss_theta"]   # not a signed score


def test_sign_flips_are_counted_strictly_and_listed_in_a_order():
    ids = [f"p{i}" for i in range(12)]
    x = [1, 2, 3, 4, 5, 6, 7, -1, -2, 0, 1, -1]
    y = [-1, -2, -3, -4, -5, -6, -7, 1, 2, 1, 0, -1]
    # + in a, − in b: p0..p6 (7 pairs); − in a, + in b: p7, p8; zeros (p9, p10) are no flip
    got = compare_tables(score_table(ids, lossdiff=x, irm=x, **{"if": x}),
                         score_table(ids, lossdiff=y, irm=y, **{"if": y}))
    for name in ("lossdiff", "irm", "if"):
        row = got["scores"][name]
        assert row["helpful_a_harmful_b"] == 7 and row["harmful_a_helpful_b"] == 2
        assert row["examples"] == (["p0", "p1", "p2", "p3", "p4"], ["p7", "p8"])


def test_non_finite_rows_are_left_out_and_short_scores_skipped():
    ids = ["p0", "p1", "p2", "p3", "p4"]
    a = score_table(ids, irm=[1.0, np.nan, 3.0, 4.0, 5.0], lossdiff=[1.0, np.nan, np.nan, 2, 3])
    b = score_table(ids, irm=[2.0, 1.0, np.inf, 1.0, 5.0], lossdiff=[1.0, 2, 3, np.nan, 4])
    got = compare_tables(a, b)
    assert got["n_common"] == 5
    assert got["scores"]["irm"]["n"] == 3                      # p0, p3, p4
    assert got["scores"]["irm"]["spearman"] == pytest.approx(
        stats.spearmanr([1.0, 4, 5], [2.0, 1, 5]).statistic)
    assert "lossdiff" not in got["scores"]                     # only p0, p4 finite in both


def test_tables_without_a_shared_id_are_refused():
    with pytest.raises(GradprojError, match="^the two score tables share no pair id$"):
        compare_tables(score_table(["a"], irm=[1.0]), score_table(["b"], irm=[1.0]))


def test_compare_dirs_reads_scores_and_selection_overlap(tmp_path):
    ids = [f"p{i}" for i in range(6)]
    a = run_folder(tmp_path / "a", score_table(ids, irm=[1, 2, 3, 4, 5, 6]),
                   ["p0", "p1", "p2", "p3"])
    b = run_folder(tmp_path / "b", score_table(ids[::-1], irm=[6, 5, 4, 3, 1, 2]),
                   ["p2", "p3", "p4"])
    got = compare_dirs(a, b)
    assert got["n_common"] == 6
    # b in a's order: p0..p5 → 2, 1, 3, 4, 5, 6
    assert got["scores"]["irm"]["spearman"] == pytest.approx(
        stats.spearmanr([1, 2, 3, 4, 5, 6], [2, 1, 3, 4, 5, 6]).statistic)
    assert got["selection_overlap"] == pytest.approx(2 / 3)    # |{p2,p3}| / min(4, 3)
    assert json.loads(json.dumps(got))["scores"]["irm"]["n"] == 6   # the CLI writes it as JSON

    (b / "selection.json").unlink()                              # one selection missing
    assert "selection_overlap" not in compare_dirs(a, b)


def test_compare_dirs_without_scores_is_refused(tmp_path):
    a = run_folder(tmp_path / "a", score_table(["p0"], irm=[1.0]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GradprojError) as err:
        compare_dirs(a, tmp_path / "empty")
    assert str(err.value) == (f"{tmp_path / 'empty'}: no scores.parquet "
                              "(run gradproj score or select first)")


def test_no_module_imports_a_private_name_of_compare():
    offenders = []
    for folder in ("gradproj", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.ImportFrom) and node.module == "gradproj.pipeline.compare"
                        and any(a.name.startswith("_") for a in node.names)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
