"""Correlations over the pairs that could be scored: every function takes array-likes of equal
length and drops the positions where any input is not finite; too few points or no spread gives
NaN, never an exception.

    Pearson r       cov(x, y) / (σ_x σ_y)
    Spearman ρ      Pearson correlation of the average ranks (ties share their mean rank)
"""

from __future__ import annotations

import numpy as np
from scipy import stats as st


def finite(*arrays) -> list[np.ndarray]:
    """The arrays as float64 [n], restricted to positions where every one is finite."""
    xs = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    ok = np.ones(len(xs[0]), bool)
    for x in xs:
        if len(x) != len(ok):
            raise ValueError(f"arrays of different lengths: {[len(v) for v in xs]}")
        ok &= np.isfinite(x)
    return [x[ok] for x in xs]


def degenerate(x: np.ndarray) -> bool:
    """Fewer than 2 points or no spread: a correlation is undefined."""
    return len(x) < 2 or np.ptp(x) == 0


def pearson(x, y) -> float:
    """Pearson r over the finite pairs; NaN with fewer than 2 or a constant side."""
    x, y = finite(x, y)
    if degenerate(x) or degenerate(y):
        return float("nan")
    return float(st.pearsonr(x, y).statistic)


def spearman(x, y) -> float:
    """Spearman ρ (Pearson of average ranks) over the finite pairs; NaN as :func:`pearson`."""
    x, y = finite(x, y)
    if degenerate(x) or degenerate(y):
        return float("nan")
    return float(st.spearmanr(x, y).statistic)
