"""Intervals of correlations that only the benchmarks report: Fisher's for a Pearson r, a
percentile bootstrap for a Spearman ρ (the library's statistics: gradproj.evaluation.stats)."""

from __future__ import annotations

import math

import numpy as np

from gradproj.evaluation.stats import finite, ranks


def fisher_ci(r: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Approximate 95% interval of a Pearson r from n pairs (Fisher z; NaN when undefined)."""
    if not math.isfinite(r) or n < 4 or abs(r) >= 1:
        return float("nan"), float("nan")
    m, s = math.atanh(r), 1 / math.sqrt(n - 3)
    return math.tanh(m - z * s), math.tanh(m + z * s)


def bootstrap_spearman_ci(x, y, reps: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of Spearman(x, y) over ``reps`` resamples of the pairs (with
    replacement, seeded); resamples without spread on a side are left out. NaN when none."""
    x, y = finite(x, y)
    if len(x) < 2 or reps < 1:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), (reps, len(x)))
    rx, ry = ranks(x[idx]), ranks(y[idx])                     # [reps, n] each
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    rho = np.divide((rx * ry).sum(1), den, out=np.full(reps, np.nan), where=den > 0)
    rho = rho[np.isfinite(rho)]
    if not len(rho):
        return float("nan"), float("nan")
    lo, hi = np.quantile(rho, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
