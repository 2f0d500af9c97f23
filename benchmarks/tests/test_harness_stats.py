"""benchmarks.harness.stats against hand-computed values and a brute-force bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.harness.stats import bootstrap_spearman_ci, fisher_ci
from gradproj.evaluation.stats import spearman


def test_fisher_interval():
    lo, hi = fisher_ci(0.5, 28)               # atanh(.5) ± 1.96 / 5
    assert lo == pytest.approx(math.tanh(math.atanh(0.5) - 0.392))
    assert hi == pytest.approx(math.tanh(math.atanh(0.5) + 0.392))
    assert lo == pytest.approx(0.1560, abs=1e-4) and hi == pytest.approx(0.7358, abs=1e-4)
    assert all(math.isnan(v) for v in fisher_ci(0.5, 3))


def test_bootstrap_interval_is_the_percentiles_of_resampled_spearman():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(25)
    y = x + 0.8 * rng.standard_normal(25)
    lo, hi = bootstrap_spearman_ci(x, y, reps=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 25, (300, 25))
    rhos = [spearman(x[i], y[i]) for i in idx]
    rhos = [r for r in rhos if math.isfinite(r)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(rhos, [0.025, 0.975])))
    assert lo < spearman(x, y) < hi
    assert all(math.isnan(v) for v in bootstrap_spearman_ci(x, y, reps=0))
