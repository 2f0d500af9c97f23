"""Selection rules over a score table: which pairs to keep, and why each other pair was dropped.

A *middle band* (lo, hi) of a score s keeps d when δ_lo < s(d) < δ_hi, with δ the lo and hi
quantiles of s over the pairs (numpy's linear interpolation); values equal to a δ are dropped,
so ties at a boundary go out together.

Rules (all return a :class:`Selection`):

- ``lossdiff-irm``: LossDiff in its middle band AND IRM in its middle band (the paper's rule).
- ``tif``, ``lossdiff``, ``irm``: one score in its middle band.
- ``top-if``: the round(F·N) pairs with the highest IF (classical influence selection).
- ``reward-gap``: the round(F·N) pairs with the smallest implicit reward gap, i.e. the
  objective's margin m_θ(d) = IRM, ascending and signed (the hardest pairs; Qi, Xu & Jin,
  "Difficulty-Based Preference Data Selection by DPO Implicit Reward Gap", arXiv 2508.04149).
- ``random``: round(F·N) pairs drawn with a seeded generator.
- ``all``: every pair.

Pairs that cannot be scored never abort a selection: a pair excluded by tokenization is dropped
with the reason ``excluded:<why>``, a pair whose score the rule needs is NaN or infinite with
``nonfinite:<score>``; the rule then runs on the scorable pairs, and its keep fraction is taken
over them (``Selection.n_scorable``).

Bands from ``--keep F``: each score trims a total mass t, split between its tails by
``low_share`` a: band = (a·t, 1 − (1−a)·t). The default a = 5/9 reproduces the TIF band
(0.20, 0.84) at F = 0.64 (t = 1 − F for one score) — a bit more is cut from the low tail (pairs
the model disagrees with: the likely mislabelled ones) than from the high tail (pairs it already
fits). Every score of a rule gets the same t, found by bisection so that the rule keeps F·N
pairs to within one pair (where ties allow): for one score t ≈ 1 − F, for ``lossdiff-irm`` the
intersection of two bands needs a smaller t.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from gradproj.core.errors import GradprojError
from gradproj.attribution.scores import ScoreTable

METHODS = ("lossdiff-irm", "tif", "lossdiff", "irm", "top-if", "reward-gap", "random", "all")
BAND_SCORES = {"lossdiff-irm": ("lossdiff", "irm"), "tif": ("if",), "lossdiff": ("lossdiff",),
               "irm": ("irm",)}
DEFAULT_LOW_SHARE = 5 / 9


@dataclass
class Selection:
    method: str
    ids: list[str]
    """All pair ids, in table order."""
    kept: list[str]
    dropped: dict[str, list[str]]
    """dropped pair id → reasons, e.g. ["lossdiff:low", "irm:high"] or ["excluded:<why>"]."""
    bands: dict[str, tuple[float, float]] = field(default_factory=dict)
    """score → (lo, hi) quantile band."""
    thresholds: dict[str, tuple[float, float]] = field(default_factory=dict)
    """score → (δ_lo, δ_hi) values."""
    unscorable: dict[str, str] = field(default_factory=dict)
    """pair id → why the rule could not score it (``excluded:<why>``, ``nonfinite:<score>``)."""

    @property
    def n_scorable(self) -> int:
        return len(self.ids) - len(self.unscorable)

    @property
    def keep_fraction(self) -> float:
        """Kept share of the scorable pairs (the share ``keep`` asks for)."""
        return len(self.kept) / max(1, self.n_scorable)

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(r for reasons in self.dropped.values() for r in reasons))

    def to_dict(self) -> dict:
        return {"method": self.method, "n": len(self.ids), "n_scorable": self.n_scorable,
                "kept": len(self.kept), "dropped": len(self.dropped),
                "keep_fraction": self.keep_fraction,
                "bands": {k: list(v) for k, v in self.bands.items()},
                "thresholds": {k: list(v) for k, v in self.thresholds.items()},
                "drop_reasons": self.reason_counts(), "unscorable": dict(self.unscorable)}


def _check_band(band, name: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in band)
    if not 0.0 <= lo < hi <= 1.0:
        raise GradprojError(f"{name} must satisfy 0 <= LOW < HIGH <= 1, got {lo},{hi}")
    return lo, hi


def _check_keep(keep: float) -> float:
    if not (0.0 < keep <= 1.0) or math.isnan(keep):
        raise GradprojError(f"--keep must be in (0, 1], got {keep}")
    return float(keep)


RULE_SCORES = {**BAND_SCORES, "top-if": ("if",), "reward-gap": ("irm",), "random": (),
               "all": ()}
"""The scores each rule reads."""
TOP_K = {"top-if": ("if", -1.0, "if:low"), "reward-gap": ("irm", 1.0, "irm:high")}
"""Rules keeping the round(F·N) pairs first in the order of sign × score (stable): the score,
the sign, and the drop reason of the others."""


def unscorable_pairs(table: ScoreTable, method: str,
                     excluded: dict[str, str] | None = None) -> dict[str, str]:
    """pair id → reason for the pairs ``method`` cannot score: excluded by tokenization
    (``excluded:<why>``, from ``excluded`` or the table's ``meta["excluded"]``), or with a NaN
    or infinite score the rule reads (``nonfinite:<score>``, the first such score)."""
    excluded = excluded if excluded is not None else table.meta.get("excluded", {})
    out = {i: f"excluded:{why}" for i, why in excluded.items() if i in set(table.ids)}
    for name in RULE_SCORES[method]:
        col = np.asarray(table[name], dtype=float)
        for j in np.flatnonzero(~np.isfinite(col)):
            out.setdefault(table.ids[j], f"nonfinite:{name}")
    return {i: out[i] for i in table.ids if i in out}


def band_mask(values: np.ndarray, band) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(kept, below, above) boolean masks and the (δ_lo, δ_hi) thresholds of a middle band."""
    lo, hi = band
    d_lo, d_hi = (float(x) for x in np.quantile(values, [lo, hi]))
    below, above = values <= d_lo, values >= d_hi
    return ~below & ~above, below, above


def band_from_trim(trim: float, low_share: float) -> tuple[float, float]:
    return low_share * trim, 1.0 - (1.0 - low_share) * trim


def _intersect(cols: dict[str, np.ndarray], bands: dict[str, tuple[float, float]]):
    kept = np.ones(len(next(iter(cols.values()))), bool)
    reasons: dict[int, list[str]] = {}
    thresholds = {}
    for name, col in cols.items():
        k, below, above = band_mask(col, bands[name])
        thresholds[name] = tuple(float(x) for x in np.quantile(col, bands[name]))
        kept &= k
        for i in np.flatnonzero(below):
            reasons.setdefault(int(i), []).append(f"{name}:low")
        for i in np.flatnonzero(above):
            reasons.setdefault(int(i), []).append(f"{name}:high")
    return kept, reasons, thresholds


def _solve_trim(cols, keep: float, low_share: float) -> float:
    """Common trim t of every score's band so the intersection keeps ≈ keep·N pairs."""
    n = len(next(iter(cols.values())))
    target = keep * n

    def kept(t):
        bands = {c: band_from_trim(t, low_share) for c in cols}
        return int(_intersect(cols, bands)[0].sum())

    lo, hi = 0.0, 1.0 - 1e-12      # kept(t) is non-increasing in t
    for _ in range(60):
        mid = (lo + hi) / 2
        if kept(mid) > target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda t: (abs(kept(t) - target), t))


def select(table: ScoreTable, method: str, keep: float = 0.64, *,
           bands: dict[str, tuple[float, float]] | None = None,
           low_share: float = DEFAULT_LOW_SHARE, seed: int = 0,
           excluded: dict[str, str] | None = None) -> Selection:
    """Apply ``method`` to the scorable pairs of ``table`` (see :func:`unscorable_pairs`; the
    others are dropped with their reason). ``bands`` (score → (lo, hi)) overrides solving from
    keep."""
    if method not in METHODS:
        raise GradprojError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    keep = _check_keep(keep)
    if not 0.0 < low_share < 1.0:
        raise GradprojError(f"--low-share must be in (0, 1), got {low_share}")
    unscorable = unscorable_pairs(table, method, excluded)
    rows = [j for j, i in enumerate(table.ids) if i not in unscorable]
    if not rows:
        raise GradprojError(f"no pair can be scored for {method} ({len(unscorable)} unscorable: "
                            f"{', '.join(sorted(set(unscorable.values())))})")
    ids = [table.ids[j] for j in rows]
    kept, dropped, use, thresholds = _apply(method, ids, {
        name: np.asarray(table[name], dtype=float)[rows] for name in RULE_SCORES[method]},
        keep, bands, low_share, seed)
    dropped.update({i: [why] for i, why in unscorable.items()})
    order = {i: n for n, i in enumerate(table.ids)}
    return Selection(method, list(table.ids), kept,
                     dict(sorted(dropped.items(), key=lambda kv: order[kv[0]])), use,
                     thresholds, unscorable)


def _apply(method, ids, cols, keep, bands, low_share, seed):
    """(kept ids, dropped id → reasons, bands, thresholds) of ``method`` on finite scores."""
    n = len(ids)
    if method == "all":
        return list(ids), {}, {}, {}
    if method == "random" or method in TOP_K:
        size = max(1, round(keep * n))
        if method == "random":
            chosen = set(np.random.default_rng(seed).choice(n, size=size, replace=False).tolist())
            why = "random"
        else:
            name, sign, why = TOP_K[method]
            chosen = set(np.argsort(sign * cols[name], kind="stable")[:size].tolist())
        return ([i for j, i in enumerate(ids) if j in chosen],
                {i: [why] for j, i in enumerate(ids) if j not in chosen}, {}, {})
    names = BAND_SCORES[method]
    given = {k: _check_band(v, f"--{k}-band") for k, v in (bands or {}).items() if k in names}
    if len(given) == len(names):
        use = given
    elif given:
        raise GradprojError(f"give a band for every score of {method} "
                            f"({', '.join(names)}) or none (solved from --keep)")
    else:
        t = _solve_trim(cols, keep, low_share)
        use = {c: band_from_trim(t, low_share) for c in names}
    kept, reasons, thresholds = _intersect(cols, use)
    return ([i for j, i in enumerate(ids) if kept[j]],
            {ids[j]: r for j, r in sorted(reasons.items())}, use, thresholds)


def overlap_coefficient(a, b) -> float:
    """|A ∩ B| / min(|A|, |B|)."""
    a, b = set(a), set(b)
    return len(a & b) / max(1, min(len(a), len(b)))
