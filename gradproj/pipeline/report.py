"""The human report of a selection: report.md with PNG plots beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradproj.attribution.scores import ScoreTable
from gradproj.attribution.selection import Selection
from gradproj.core.atomic import write_atomic
from gradproj.core.plots import pyplot, save_figure
from gradproj.pipeline.groups import group_lines, plot_groups


def plot_if_histogram(table: ScoreTable, sel_tif: Selection, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = table["if"][np.isfinite(table["if"])]
    ax.hist(values, bins=40, color="#7a9cc6")
    lo, hi = sel_tif.thresholds["if"]
    ax.axvspan(lo, hi, color="#2ca02c", alpha=0.15, label=f"TIF band ({len(sel_tif.kept)} kept)")
    ax.axvline(lo, color="#2ca02c")
    ax.axvline(hi, color="#2ca02c")
    ax.set_xlabel("IF(d) = <g_d, mean validation gradient>")
    ax.set_ylabel("pairs")
    ax.legend()
    return save_figure(fig, path)


def plot_scatter(table: ScoreTable, sel: Selection, path: Path) -> str:
    plt = pyplot()
    kept = np.isin(np.asarray(table.ids), sel.kept)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    x, y = table["irm"], table["lossdiff"]
    ax.scatter(x[~kept], y[~kept], s=10, c="#d62728", alpha=0.6, label="dropped")
    ax.scatter(x[kept], y[kept], s=10, c="#1f77b4", alpha=0.6, label="kept")
    ax.set_xlabel("IRM(d) = h_θ(d)")
    ax.set_ylabel("LossDiff(d) = ℓ(θ;d) − ℓ(θ_V;d)")
    ax.set_title(f"{sel.method}: {len(sel.kept)} of {len(sel.ids)} kept")
    ax.legend()
    return save_figure(fig, path)


UNSCORABLE_SHOWN = 50
"""Unscorable pairs listed in report.md (selection.json lists all)."""


def write_report(out: Path, table: ScoreTable, sel: Selection, info: dict) -> Path:
    """DIR/report.md (+ scatter.png, if_hist.png when IF exists)."""
    from gradproj.attribution.selection import select

    lines = [f"# gradproj selection: {sel.method}", "",
             f"Kept **{len(sel.kept)} of {sel.n_scorable}** scorable pairs "
             f"({sel.keep_fraction:.1%}; asked for keep {info['keep']}).", ""]
    if sel.unscorable:
        lines += [f"{len(sel.ids)} pairs in the input; {len(sel.unscorable)} could not be scored "
                  "and are dropped (the keep fraction is over the scorable pairs):", "",
                  "| pair | reason |", "|---|---|"]
        shown = list(sel.unscorable.items())[:UNSCORABLE_SHOWN]
        lines += [f"| {pid} | {why} |" for pid, why in shown]
        if len(sel.unscorable) > len(shown):
            lines.append(f"| ... | {len(sel.unscorable) - len(shown)} more in selection.json |")
        lines.append("")
    if sel.bands:
        lines += ["| score | band (quantiles) | thresholds |", "|---|---|---|"]
        for name, band in sel.bands.items():
            lo, hi = sel.thresholds[name]
            lines.append(f"| {name} | ({band[0]:.3f}, {band[1]:.3f}) | ({lo:.4g}, {hi:.4g}) |")
        lines.append("")
    if info.get("drop_reasons"):
        lines += ["| drop reason | pairs |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in sorted(info["drop_reasons"].items())]
        lines.append("")
    if "lossdiff" in table.columns and "irm" in table.columns:
        png = plot_scatter(table, sel, out / "scatter.png")
        lines += ["## LossDiff vs IRM", "", f"![LossDiff vs IRM]({png})", ""]
        finite = np.isfinite(table["lossdiff"]) & np.isfinite(table["irm"])
        r = np.corrcoef(table["lossdiff"][finite], table["irm"][finite])[0, 1]
        lines += [f"Pearson r(LossDiff, IRM) = {r:.3f}", ""]
    if "if" in table.columns:
        tif = select(table, "tif", info["keep"], low_share=info["low_share"])
        png = plot_if_histogram(table, tif, out / "if_hist.png")
        lines += ["## Influence", "", f"![IF histogram]({png})", "",
                  f"Overlap coefficient |A∩B|/min(|A|,|B|) of this selection with the TIF "
                  f"selection at the same keep: **{info['overlap_with_tif']:.3f}**", ""]
        for name in ("lossdiff", "irm"):
            if name in table.columns:
                ok = np.isfinite(table[name]) & np.isfinite(table["if"])
                r = np.corrcoef(table[name][ok], table["if"][ok])[0, 1]
                lines.append(f"- Pearson r({name}, IF) = {r:.3f}")
        lines.append("")
    else:
        lines += ["IF was not computed for this method (add `--with-if` for the IF histogram "
                  "and the overlap with TIF).", ""]
    if info.get("groups"):
        column, rows = info["groups"]["column"], info["groups"]["rows"]
        png = plot_groups(rows, column, out / "groups.png")
        lines += [f"## By {column}", "", *group_lines(rows, column), "",
                  f"![kept share by {column}]({png})", ""]
    if info.get("computed"):
        lines += [f"Computed in this run: {', '.join(info['computed'])}.", ""]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines))
    return path
