"""Value by group (``--group-by COLUMN``): how a selection treats each value of an input column,
e.g. UltraFeedback's ``source``.

Per group g: its pairs, how many the rule kept and the kept share, the mean of each score over
the group's pairs where it is finite, and — where the input has a boolean ``flipped`` column —
the share of the group's flipped pairs the rule dropped.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from gradproj.attribution.scores import ScoreTable
from gradproj.attribution.selection import Selection
from gradproj.core.data import PreferencePair
from gradproj.core.errors import InputError
from gradproj.core.plots import pyplot, save_figure

SCORES = ("if", "lossdiff", "irm")
FLIPPED = "flipped"


def group_values(pairs: list[PreferencePair], column: str) -> dict[str, str]:
    """pair id → its value of ``column`` as text; a pair without it is an input error."""
    out = {}
    for p in pairs:
        if column not in p.record:
            path, _, line = p.source.rpartition(":")
            raise InputError(f"is missing (--group-by {column})", path or p.source,
                             int(line) if line.isdigit() else None, column)
        out[p.id] = str(p.record[column])
    return out


def group_table(pairs: list[PreferencePair], table: ScoreTable, sel: Selection,
                column: str) -> list[dict]:
    """One row per group value (sorted by size, then name); see the module docstring."""
    values = group_values(pairs, column)
    pos = {i: n for n, i in enumerate(table.ids)}
    kept = set(sel.kept)
    flips = {p.id for p in pairs if p.record.get(FLIPPED) is True}
    has_flips = any(FLIPPED in p.record for p in pairs)
    members = defaultdict(list)
    for pid in table.ids:
        members[values[pid]].append(pid)
    rows = []
    for group, ids in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        row = {"group": group, "pairs": len(ids), "kept": sum(i in kept for i in ids)}
        row["kept_share"] = row["kept"] / len(ids)
        for name in (s for s in SCORES if s in table.columns):
            v = np.array([table[name][pos[i]] for i in ids], dtype=float)
            v = v[np.isfinite(v)]
            row[f"mean_{name}"] = float(v.mean()) if len(v) else None
        if has_flips:
            flipped = [i for i in ids if i in flips]
            row["flipped"] = len(flipped)
            row["flips_removed"] = (sum(i not in kept for i in flipped) / len(flipped)
                                    if flipped else None)
        rows.append(row)
    return rows


def _cell(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def group_lines(rows: list[dict], column: str) -> list[str]:
    """A Markdown table of :func:`group_table`'s rows."""
    keys = [k for k in rows[0] if k != "group"]
    lines = [f"| {column} | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {r['group']} | " + " | ".join(_cell(r[k]) for k in keys) + " |" for r in rows]
    return lines


def plot_groups(rows: list[dict], column: str, path: Path) -> str:
    """Kept share per group (bars) — PNG at ``path``; returns its file name."""
    fig, ax = pyplot().subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.5))
    ax.bar([r["group"] for r in rows], [r["kept_share"] for r in rows], color="#4c72b0")
    ax.set_ylabel("kept share")
    ax.set_ylim(0, 1)
    ax.set_title(f"kept share by {column}")
    ax.tick_params(axis="x", rotation=30)
    return save_figure(fig, path)
