"""How two models value the same pairs: rank agreement of their scores, and sign flips.

Data value is a property of the model: a pair helpful to one can be harmful to another.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gradproj.attribution.scores import ScoreTable
from gradproj.core.correlation import pearson, spearman
from gradproj.core.errors import GradprojError

SIGNED = {"if": "IF > 0 helps", "lossdiff": "LossDiff > 0 helps", "irm": "IRM > 0: fits"}


def compare_tables(a: ScoreTable, b: ScoreTable) -> dict:
    """Per shared score: n, Spearman, Pearson, and pairs whose sign differs between a and b."""
    pos_b = {i: n for n, i in enumerate(b.ids)}
    common = [i for i in a.ids if i in pos_b]
    if not common:
        raise GradprojError("the two score tables share no pair id")
    ia = np.array([n for n, i in enumerate(a.ids) if i in pos_b])
    ib = np.array([pos_b[i] for i in np.asarray(a.ids)[ia]])
    out = {"n_common": len(common), "scores": {}}
    for name in sorted(set(a.columns) & set(b.columns)):
        x, y = a[name][ia], b[name][ib]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3:
            continue
        x, y = x[ok], y[ok]
        row = {"n": int(ok.sum()), "spearman": spearman(x, y),
               "pearson": pearson(x, y)}
        if name in SIGNED:
            ids = np.asarray(a.ids)[ia][ok]
            flip_ab = ids[(x > 0) & (y < 0)].tolist()
            flip_ba = ids[(x < 0) & (y > 0)].tolist()
            row["helpful_a_harmful_b"] = len(flip_ab)
            row["harmful_a_helpful_b"] = len(flip_ba)
            row["examples"] = (flip_ab[:5], flip_ba[:5])
        out["scores"][name] = row
    return out


def compare_dirs(dir_a, dir_b) -> dict:
    tables = []
    for d in (dir_a, dir_b):
        path = Path(d) / "scores.parquet"
        if not path.is_file():
            raise GradprojError(f"{d}: no scores.parquet (run gradproj score or select first)")
        tables.append(ScoreTable.read(path))
    result = compare_tables(*tables)
    sel = [Path(d) / "selection.json" for d in (dir_a, dir_b)]
    if all(p.is_file() for p in sel):
        kept = [set(json.loads(p.read_text())["kept_ids"]) for p in sel]
        result["selection_overlap"] = len(kept[0] & kept[1]) / max(1, min(map(len, kept)))
    return result
