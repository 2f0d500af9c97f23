"""Label noise with known identity: flip pairs, then ask how well scores and rules find them.

A flipped pair has chosen and rejected swapped. With F the set of flipped training pairs:

    AUROC(s)        P(s(clean) > s(flipped)) + ½ P(tie)       (0.5: chance; > 0.5: flips score low)
    flips removed   |F \\ K| / |F|      for a rule keeping K   (chance: 1 − |K|/N)
    flipped in kept |F ∩ K| / |K|
    keep AUROC      AUROC of the keep decision 1[d ∈ K] itself = (TPR + TNR) / 2 for clean pairs

The per-score AUROC tables, the per-task AUROC and the norm/direction diagnosis of IF are the
benchmarks' (``benchmarks/harness/noise.py``); here are what ``gradproj ablate`` and the demo use:
flipping pairs and what a selection did to the flips.
"""

from __future__ import annotations

import random

import numpy as np

from gradproj.attribution.selection import Selection, overlap_coefficient
from gradproj.evaluation.stats import auroc


def flip_records(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], set[str]]:
    """Swap chosen/rejected in round(fraction · n) seeded-random rows (copies); also the ids."""
    rng = random.Random(seed)
    picked = set(rng.sample(range(len(rows)), round(fraction * len(rows))))
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        if i in picked:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        out.append(row)
    return out, {rows[i]["id"] for i in picked}


def selection_stats(sel: Selection, flipped, tif_kept=None) -> dict:
    """How a rule's selection treats the flipped pairs (see the module docstring), its overlap
    coefficient with the TIF selection (when given), bands and drop reasons."""
    kept, flipped = set(sel.kept), set(flipped)
    is_flip = np.array([i in flipped for i in sel.ids])
    return {"kept": len(kept),
            "flips_removed": len(flipped - kept) / max(1, len(flipped)),
            "flipped_in_kept": len(flipped & kept) / max(1, len(kept)),
            "overlap_tif": (overlap_coefficient(sel.kept, tif_kept) if tif_kept is not None
                            else float("nan")),
            "keep_auroc": auroc([i in kept for i in sel.ids], ~is_flip),
            "bands": {k: list(v) for k, v in sel.bands.items()},
            "drop_reasons": sel.reason_counts()}
