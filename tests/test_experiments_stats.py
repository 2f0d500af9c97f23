"""gradproj.evaluation.stats against hand-computed values and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradproj.evaluation import stats


def _auroc_loop(scores, positive):
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def test_ranks_average_ties_from_one():
    assert stats.ranks([3, 1, 4, 1, 5]).tolist() == [3.0, 1.5, 4.0, 1.5, 5.0]
    assert stats.ranks([[2, 1], [1, 1]]).tolist() == [[2.0, 1.0], [1.5, 1.5]]


def test_spearman_hand_example_with_a_tie():
    # ranks y = [1, 2, 3.5, 5, 3.5]; deviations from 3: x (-2,-1,0,1,2), y (-2,-1,.5,2,.5)
    # Σ dx·dy = 8, Σ dx² = 10, Σ dy² = 9.5  →  ρ = 8 / √95
    assert stats.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert stats.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_correlations_drop_non_finite_pairs_and_need_spread():
    x = [1.0, 2.0, np.nan, 4.0, 5.0, 6.0]
    y = [2.0, 4.1, 7.0, 7.9, np.inf, 12.2]
    kept_x, kept_y = [1.0, 2.0, 4.0, 6.0], [2.0, 4.1, 7.9, 12.2]
    assert stats.pearson(x, y) == pytest.approx(np.corrcoef(kept_x, kept_y)[0, 1])
    assert stats.spearman(x, y) == pytest.approx(1.0)
    assert math.isnan(stats.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(stats.spearman([1.0], [2.0]))
    with pytest.raises(ValueError, match="different lengths"):
        stats.pearson([1, 2], [1, 2, 3])


def test_auroc_hand_example_and_brute_force():
    # positives 0.9, 0.4 vs negatives 0.5, 0.4, 0.1: 3 + (0 + ½ + 1) = 4.5 of 6 pairs
    s = [0.9, 0.4, 0.5, 0.4, 0.1]
    pos = [True, True, False, False, False]
    assert stats.auroc(s, pos) == 0.75
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40).astype(float)          # many ties
    labels = rng.random(40) < 0.4
    scores[3] = np.nan                                     # left out
    ok = np.isfinite(scores)
    assert stats.auroc(scores, labels) == pytest.approx(_auroc_loop(scores[ok], labels[ok]))
    assert math.isnan(stats.auroc([1.0, 2.0], [True, True]))


def test_mean_std_and_t_intervals():
    assert stats.mean_std([1, 2, 3, 4]) == pytest.approx((2.5, 1.2909944))
    assert stats.mean_std([0.7]) == (0.7, 0.0)
    assert stats.mean_std([2.0, 2.0, np.nan]) == (2.0, 0.0)
    # s/√n = 1.2909944 / 2, t(0.975, 3) = 3.1824463
    m, lo, hi = stats.mean_ci([1, 2, 3, 4])
    half = 1.2909944 / 2 * 3.1824463
    assert (m, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    # differences 0.1, 0.15, 0.05: mean 0.1, s = 0.05, t(0.975, 2) = 4.3026527
    m, lo, hi = stats.paired_difference_ci([0.6, 0.7, 0.65], [0.5, 0.55, 0.6])
    half = 0.05 / math.sqrt(3) * 4.3026527
    assert (m, lo, hi) == pytest.approx((0.1, 0.1 - half, 0.1 + half))
    assert math.isnan(stats.mean_ci([1.0])[1])
