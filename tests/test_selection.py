"""Selection rules on hand-made score tables: definitions, ties, keep solver, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from gradproj.core.errors import GradprojError
from gradproj.attribution.scores import ScoreTable
from gradproj.attribution.selection import band_from_trim, overlap_coefficient, select


def _table(**cols):
    n = len(next(iter(cols.values())))
    return ScoreTable([f"p{i}" for i in range(n)], {k: np.asarray(v, float)
                                                   for k, v in cols.items()})


def test_single_band_keeps_strict_middle_and_says_why():
    t = _table(irm=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    sel = select(t, "irm", bands={"irm": (0.2, 0.7)})
    # quantiles: 0.2 → 2.0, 0.7 → 7.0; strict band keeps 3..6
    assert sel.thresholds["irm"] == (2.0, 7.0)
    assert sel.kept == ["p3", "p4", "p5", "p6"]
    assert sel.dropped["p0"] == ["irm:low"] and sel.dropped["p2"] == ["irm:low"]
    assert sel.dropped["p7"] == ["irm:high"] and len(sel.dropped) == 7
    assert sel.reason_counts() == {"irm:low": 3, "irm:high": 4}


def test_ties_at_a_boundary_go_out_together():
    t = _table(lossdiff=[1, 2, 2, 2, 3, 4, 5, 5, 5, 6])
    sel = select(t, "lossdiff", bands={"lossdiff": (0.2, 0.7)})
    lo, hi = sel.thresholds["lossdiff"]
    assert (lo, hi) == (2.0, 5.0)
    assert sel.kept == ["p4", "p5"]       # every 2 and every 5 dropped


def test_lossdiff_irm_is_the_intersection_with_both_reasons():
    ld = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    irm = [5, 0, 9, 4, 6, 3, 7, 2, 8, 0]
    t = _table(lossdiff=ld, irm=irm)
    bands = {"lossdiff": (0.1, 0.9), "irm": (0.1, 0.9)}
    sel = select(t, "lossdiff-irm", bands=bands)
    a = set(select(t, "lossdiff", bands=bands).kept)
    b = set(select(t, "irm", bands=bands).kept)
    assert set(sel.kept) == a & b
    assert sel.dropped["p0"] == ["lossdiff:low"] and sel.dropped["p1"] == ["irm:low"]
    assert sel.dropped["p9"] == ["lossdiff:high", "irm:low"]


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.64, 0.9, 1.0])
@pytest.mark.parametrize("method", ["lossdiff-irm", "lossdiff", "tif", "top-if", "reward-gap",
                                    "random"])
def test_keep_fraction_within_one_pair(method, keep):
    rng = np.random.default_rng(int(keep * 100))
    n = 257
    t = _table(lossdiff=rng.standard_normal(n), irm=rng.standard_normal(n) + rng.standard_normal(n),
               **{"if": rng.standard_normal(n)})
    sel = select(t, method, keep=keep)
    if keep == 1.0 and method in ("lossdiff", "tif", "lossdiff-irm"):
        # a middle band can't keep its own extremes: (0, 1) drops the min and max
        assert len(sel.kept) >= n - 4
    else:
        assert abs(len(sel.kept) - keep * n) <= 1, (len(sel.kept), keep * n)
    assert len(sel.kept) + len(sel.dropped) == n


def test_default_split_reproduces_tif_band():
    assert band_from_trim(0.36, 5 / 9) == pytest.approx((0.2, 0.84))
    rng = np.random.default_rng(0)
    sel = select(_table(**{"if": rng.standard_normal(100)}), "tif", keep=0.64)
    assert sel.bands["if"] == pytest.approx((0.2, 0.84), abs=0.01)
    assert len(sel.kept) == 64


def test_top_if_random_all():
    t = _table(**{"if": [3, 1, 2, 5, 4]})
    assert select(t, "top-if", keep=0.4).kept == ["p3", "p4"]
    assert select(t, "all").kept == t.ids
    r1, r2 = select(t, "random", keep=0.6, seed=1), select(t, "random", keep=0.6, seed=1)
    assert r1.kept == r2.kept and len(r1.kept) == 3
    assert select(t, "random", keep=0.6, seed=3).kept != r1.kept   # the seed matters


def test_reward_gap_keeps_the_smallest_signed_margins():
    # arXiv 2508.04149: the smallest implicit reward gaps (signed: a pair the model gets wrong,
    # margin < 0, is harder than one it barely gets right); ties keep table order
    t = _table(irm=[0.5, -2.0, 3.0, 0.1, 0.1, -0.3])
    sel = select(t, "reward-gap", keep=0.5)
    assert sel.kept == ["p1", "p3", "p5"]
    assert sel.dropped == {"p0": ["irm:high"], "p2": ["irm:high"], "p4": ["irm:high"]}
    t = _table(irm=[1.0, float("nan"), -1.0, 2.0])
    sel = select(t, "reward-gap", keep=0.34)
    assert sel.kept == ["p2"] and sel.unscorable == {"p1": "nonfinite:irm"}


def test_bad_input_is_rejected_with_a_message():
    t = _table(irm=[1.0, np.nan, 3.0], lossdiff=[1, 2, 3])
    with pytest.raises(GradprojError, match="no pair can be scored for irm \\(3 unscorable: "
                                            "excluded:too long, nonfinite:irm\\)"):
        select(t, "irm", excluded={"p0": "too long", "p2": "too long"})
    with pytest.raises(GradprojError, match=r"--keep must be in \(0, 1\], got 0.0"):
        select(t, "lossdiff", keep=0.0)
    with pytest.raises(GradprojError, match=r"--keep must be in \(0, 1\], got 1.5"):
        select(t, "lossdiff", keep=1.5)
    with pytest.raises(GradprojError, match="--lossdiff-band must satisfy 0 <= LOW < HIGH <= 1"):
        select(t, "lossdiff", bands={"lossdiff": (0.8, 0.2)})
    with pytest.raises(GradprojError, match="score 'if' is not in the table"):
        select(t, "tif")
    with pytest.raises(GradprojError, match="--method must be one of"):
        select(t, "best")


def test_overlap_coefficient():
    assert overlap_coefficient(["a", "b", "c"], ["b", "c", "d", "e"]) == pytest.approx(2 / 3)
    assert overlap_coefficient([], ["a"]) == 0.0


def test_unscorable_pairs_are_dropped_with_their_reason_not_fatal():
    """Tokenization-excluded and non-finite pairs leave the rule; keep is over the rest."""
    vals = [float(v) for v in range(12)]
    vals[3], vals[7] = np.nan, np.inf
    t = _table(irm=vals, lossdiff=[float(v) for v in range(12)])
    t.meta["excluded"] = {"p5": "chosen and rejected identical after truncation"}
    t.columns["irm"][5] = np.nan        # an excluded pair has no score either
    sel = select(t, "irm", keep=0.5)
    assert sel.unscorable == {"p3": "nonfinite:irm",
                              "p5": "excluded:chosen and rejected identical after truncation",
                              "p7": "nonfinite:irm"}
    assert sel.n_scorable == 9 and len(sel.kept) in (4, 5)      # 0.5 of 9, within one pair
    # the rule on the scorable pairs alone gives the same kept ids
    rest = [i for i in t.ids if i not in sel.unscorable]
    alone = select(_table(irm=[t["irm"][t.ids.index(i)] for i in rest]), "irm", keep=0.5)
    assert sel.kept == [rest[int(i[1:])] for i in alone.kept]
    assert sel.keep_fraction == len(sel.kept) / 9
    assert sel.dropped["p5"] == ["excluded:chosen and rejected identical after truncation"]
    info = sel.to_dict()
    assert info["n"] == 12 and info["n_scorable"] == 9
    assert info["drop_reasons"]["nonfinite:irm"] == 2
    # every rule drops the tokenization-excluded pair, `all` included; lossdiff is finite at p3
    assert select(t, "all").kept == [i for i in t.ids if i != "p5"]
    assert "p3" in select(t, "lossdiff", keep=1.0).kept
    assert len(select(t, "random", keep=0.5, seed=1).kept) == round(0.5 * 11)

