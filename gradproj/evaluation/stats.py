"""Statistics of the experiments: ranks, correlations, AUROC and intervals (scipy underneath).

Every function takes array-likes of equal length and drops the positions where any input is
not finite (NaN marks a pair that could not be scored); a statistic with too few points or no
spread is NaN, never an exception.

    rank r_i        average rank of x_i among x, 1..n (ties share their mean rank)
    Spearman ρ      Pearson correlation of the ranks
    Pearson r       cov(x, y) / (σ_x σ_y)
    AUROC           P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) = U / (n⁺ n⁻), U the Mann–Whitney statistic
    Fisher interval tanh(atanh r ± z / √(n − 3))
    mean interval   x̄ ± t_{n−1, 0.975} · s / √n  (paired difference: the same of a − b)
"""

from __future__ import annotations

import numpy as np
from scipy import stats as st

from gradproj.core.correlation import degenerate, finite, pearson, spearman  # noqa: F401


def ranks(x) -> np.ndarray:
    """Average ranks 1..n along the last axis ([n] or [m, n]); ties get their mean rank."""
    return st.rankdata(np.asarray(x, dtype=np.float64), axis=-1)


def auroc(scores, positive) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie), over finite scores.

    ``scores`` [n] float, ``positive`` [n] bool; NaN when one class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    ok = np.isfinite(s)
    s, pos = s[ok], pos[ok]
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    u = st.mannwhitneyu(s[pos], s[~pos], alternative="two-sided").statistic
    return float(u / (n1 * n0))


def mean_std(xs) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of the finite values; std 0 for one value or no spread."""
    (x,) = finite(xs)
    if not len(x):
        return float("nan"), float("nan")
    if degenerate(x):
        return float(x.mean()), 0.0
    return float(x.mean()), float(x.std(ddof=1))


def mean_ci(xs, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t interval x̄ ± t_{n−1} · s/√n of the finite values (the interval
    is NaN for fewer than two values, and collapses to the mean when they are all equal)."""
    (x,) = finite(xs)
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = float(st.sem(x)) * float(st.t.ppf((1 + level) / 2, len(x) - 1))
    return m, m - half, m + half


def paired_difference_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a_i − b_i over the pairs where both are finite (t interval): e.g.
    one rule's accuracy minus another's, paired by seed."""
    a, b = finite(a, b)
    return mean_ci(a - b, level)
